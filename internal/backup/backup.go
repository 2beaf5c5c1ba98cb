// Package backup takes and restores a cluster backup: an etcd snapshot
// (clientv3 Maintenance.Snapshot) and a logical dump of every session-store
// shard (StoreAdminService.Backup from each shard's leader), written as
// files beside a manifest with their SHA-256 sums. Restore puts etcd back
// into a data dir before the cluster starts (etcdutl's snapshot restore)
// and, once the cluster runs, loads the shards back through their Raft logs
// (StoreAdminService.Import).
//
// The two parts are each consistent (etcd at one revision, each shard at
// one Raft index) but not with each other: nothing of the restore needs
// them to be, because the restored etcd's shard map is dropped (the new
// store nodes start empty and are placed afresh) and sessions live only in
// the store.
package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Manifest is <dir>/manifest.json.
type Manifest struct {
	// Format is manifestFormat; a reader refuses another.
	Format    int       `json:"format"`
	CreatedAt time.Time `json:"created_at"`
	Prefix    string    `json:"etcd_prefix"`
	Etcd      EtcdPart  `json:"etcd"`
	// ShardCount is the cluster's shard count (a dump loads only into a
	// cluster with as many shards).
	ShardCount int         `json:"shard_count"`
	Shards     []ShardPart `json:"shards"`
}

// EtcdPart describes the etcd snapshot file.
type EtcdPart struct {
	File     string `json:"file"`
	SHA256   string `json:"sha256"`
	Bytes    int64  `json:"bytes"`
	Revision int64  `json:"revision"`
	Endpoint string `json:"endpoint"`
}

// ShardPart describes one shard's dump file.
type ShardPart struct {
	Shard     int    `json:"shard"`
	File      string `json:"file"`
	SHA256    string `json:"sha256"`
	Bytes     int64  `json:"bytes"`
	Records   int    `json:"records"`
	Sessions  int    `json:"sessions"`
	ReadIndex uint64 `json:"read_index"`
	// Store is the store node (the shard's leader) that served the dump.
	Store string `json:"store"`
}

const (
	manifestFormat = 1
	// ManifestName is the manifest's file name in a backup dir.
	ManifestName = "manifest.json"
	etcdFile     = "etcd.snapshot.db"
)

// ReadManifest reads and checks dir's manifest, and verifies every file's
// size and checksum against it.
func ReadManifest(dir string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return m, fmt.Errorf("backup %s: %w", dir, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("backup %s: decode %s: %w", dir, ManifestName, err)
	}
	if m.Format != manifestFormat {
		return m, fmt.Errorf("backup %s: manifest format %d, this build reads %d", dir, m.Format, manifestFormat)
	}
	if m.ShardCount <= 0 || len(m.Shards) != m.ShardCount {
		return m, fmt.Errorf("backup %s: manifest lists %d shard dumps for %d shards: incomplete backup", dir, len(m.Shards), m.ShardCount)
	}
	check := func(file, sum string, size int64) error {
		got, n, err := fileSum(filepath.Join(dir, file))
		if err != nil {
			return fmt.Errorf("backup %s: %w", dir, err)
		}
		if got != sum || n != size {
			return fmt.Errorf("backup %s: %s is corrupt or changed: sha256 %s (%d bytes), manifest says %s (%d bytes)", dir, file, got, n, sum, size)
		}
		return nil
	}
	if err := check(m.Etcd.File, m.Etcd.SHA256, m.Etcd.Bytes); err != nil {
		return m, err
	}
	for i, s := range m.Shards {
		if s.Shard != i {
			return m, fmt.Errorf("backup %s: manifest entry %d is for shard %d", dir, i, s.Shard)
		}
		if err := check(s.File, s.SHA256, s.Bytes); err != nil {
			return m, err
		}
	}
	return m, nil
}

func fileSum(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// writeFileSynced writes path through a temporary file, fsynced, then
// renamed, so a crash never leaves a half file under the final name.
func writeFileSynced(path string, write func(io.Writer) error) (sum string, size int64, err error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", 0, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	if err = write(cw); err != nil {
		return "", 0, err
	}
	if err = f.Sync(); err != nil {
		return "", 0, fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return "", 0, err
	}
	if err = os.Rename(tmp, path); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// retry calls fn until it succeeds, fn says the error is final, or ctx
// ends (the last error is returned, wrapped with ctx's).
func retry(ctx context.Context, fn func() (final bool, err error)) error {
	wait := 100 * time.Millisecond
	for {
		final, err := fn()
		if err == nil || final {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}
