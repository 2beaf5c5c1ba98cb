package localcluster

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Lock is an exclusive flock on <data-dir>/LOCK, held while `up` runs. The
// kernel drops it when the process dies, so a stale LOCK file never blocks.
type Lock struct {
	f *os.File
}

// LockDataDir takes the data dir's lock without waiting. When another
// process holds it the error names that process's pid, as written into the
// file by the holder.
func LockDataDir(dir string) (*Lock, error) {
	path := filepath.Join(dir, "LOCK")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: cannot open %s: %v", dir, path, unwrapPath(err))
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(b))
			if _, perr := strconv.Atoi(pid); perr != nil {
				pid = "unknown"
			}
			return nil, fmt.Errorf("data dir %s is in use by another erlmcp up (pid %s); stop it first or use another --data-dir", dir, pid)
		}
		return nil, fmt.Errorf("data dir %s: cannot lock %s: %v", dir, path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Release drops the lock. The LOCK file stays: removing it would let two
// processes lock two different files of the same name.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = l.f.Truncate(0)
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
	l.f = nil
}

// LoadOrCreateToken returns the admin token kept in path, generating and
// storing (mode 0600) a new random one the first time.
func LoadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if tok := strings.TrimSpace(string(b)); tok != "" {
			if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
				_ = os.Chmod(path, 0o600)
			}
			return tok, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("admin token %s: %v", path, unwrapPath(err))
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate admin token: %v", err)
	}
	tok := hex.EncodeToString(raw)
	if err := writeFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("admin token %s: %v", path, err)
	}
	return tok, nil
}

// ClusterFile is <data-dir>/cluster.json: how clients (erlmcp ctl, tests)
// find a local cluster.
type ClusterFile struct {
	MCPURL        string   `json:"mcp_url"`
	AdminURLs     []string `json:"admin_urls"`
	EtcdEndpoints []string `json:"etcd_endpoints"`
	AdminToken    string   `json:"admin_token"`
	// FrontURLs is every front's MCP endpoint (MCPURL first).
	FrontURLs []string `json:"front_urls,omitempty"`
}

// WriteClusterFile writes f to path (mode 0600: it holds the admin token).
func WriteClusterFile(path string, f ClusterFile) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("cluster file %s: %v", path, err)
	}
	return nil
}

// ReadClusterFile reads a cluster.json written by WriteClusterFile.
func ReadClusterFile(path string) (ClusterFile, error) {
	var f ClusterFile
	b, err := os.ReadFile(path)
	if err != nil {
		return f, fmt.Errorf("cluster file: %w", err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("cluster file %s: %v", path, err)
	}
	return f, nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return unwrapPath(err)
	}
	name := tmp.Name()
	defer os.Remove(name) // no-op after the rename
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(name, path)
}
