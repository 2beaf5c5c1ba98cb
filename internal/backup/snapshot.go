package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protodelim"
)

// SnapshotConfig says what to back up and where.
type SnapshotConfig struct {
	// EtcdEndpoint is the one etcd member the snapshot is taken from (a
	// snapshot is that member's point-in-time state).
	EtcdEndpoint string
	Prefix       string
	// Dir receives the files; it must not hold a backup already.
	Dir string
	// Timeout bounds the whole backup.
	Timeout time.Duration
	// Progress receives one line per step (nil: none).
	Progress io.Writer
}

// DefaultSnapshotConfig has the defaults but the endpoint and dir.
func DefaultSnapshotConfig() SnapshotConfig {
	return SnapshotConfig{Prefix: "/erlmcp/", Timeout: 5 * time.Minute}
}

// Validate says what is missing.
func (c SnapshotConfig) Validate() error {
	switch {
	case c.EtcdEndpoint == "":
		return errors.New("backup: no etcd endpoint")
	case c.Dir == "":
		return errors.New("backup: no output directory")
	case c.Prefix == "":
		return errors.New("backup: empty etcd prefix")
	case c.Timeout <= 0:
		return fmt.Errorf("backup: timeout %s: want more than 0", c.Timeout)
	}
	return nil
}

func progress(w io.Writer, format string, a ...any) {
	if w != nil {
		fmt.Fprintf(w, format+"\n", a...)
	}
}

// Snapshot writes a backup of the cluster into cfg.Dir: the etcd snapshot,
// one dump file per shard, then the manifest (last, so a dir without one
// is an unfinished backup).
func Snapshot(ctx context.Context, cfg SnapshotConfig) (Manifest, error) {
	if err := cfg.Validate(); err != nil {
		return Manifest{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if _, err := os.Stat(filepath.Join(cfg.Dir, ManifestName)); err == nil {
		return Manifest{}, fmt.Errorf("backup: %s already holds a backup (%s); choose a new directory", cfg.Dir, ManifestName)
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "store"), 0o700); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cfg.EtcdEndpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: etcd %s: %w", cfg.EtcdEndpoint, err)
	}
	defer cli.Close()

	m := Manifest{Format: manifestFormat, CreatedAt: time.Now().UTC(), Prefix: cfg.Prefix}
	if err := snapshotEtcd(ctx, cli, cfg, &m); err != nil {
		return m, err
	}
	st := newStores(cli, cfg.Prefix)
	defer st.close()
	v, err := st.view(ctx)
	if err != nil {
		return m, fmt.Errorf("backup: %w", err)
	}
	m.ShardCount = v.cc.ShardCount
	total := 0
	for shard := range m.ShardCount {
		part, err := snapshotShard(ctx, st, cfg, shard)
		if err != nil {
			return m, err
		}
		if part.Sessions > 0 || shard == m.ShardCount-1 || shard%16 == 0 {
			progress(cfg.Progress, "snapshot: shard %03d from %s: %d sessions, %d records (read index %d)", shard, part.Store, part.Sessions, part.Records, part.ReadIndex)
		}
		total += part.Sessions
		m.Shards = append(m.Shards, part)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, err
	}
	if _, _, err := writeFileSynced(filepath.Join(cfg.Dir, ManifestName), func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	}); err != nil {
		return m, fmt.Errorf("backup: write manifest: %w", err)
	}
	progress(cfg.Progress, "snapshot: done: etcd revision %d, %d shards, %d sessions in %s", m.Etcd.Revision, m.ShardCount, total, cfg.Dir)
	return m, nil
}

func snapshotEtcd(ctx context.Context, cli *clientv3.Client, cfg SnapshotConfig, m *Manifest) error {
	st, err := cli.Status(ctx, cfg.EtcdEndpoint)
	if err != nil {
		return fmt.Errorf("backup: etcd status of %s: %w", cfg.EtcdEndpoint, err)
	}
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		return fmt.Errorf("backup: etcd snapshot: %w", err)
	}
	defer rc.Close()
	sum, n, err := writeFileSynced(filepath.Join(cfg.Dir, etcdFile), func(w io.Writer) error {
		_, err := io.Copy(w, rc)
		return err
	})
	if err != nil {
		return fmt.Errorf("backup: etcd snapshot: %w", err)
	}
	m.Etcd = EtcdPart{File: etcdFile, SHA256: sum, Bytes: n, Revision: st.Header.GetRevision(), Endpoint: cfg.EtcdEndpoint}
	progress(cfg.Progress, "snapshot: etcd %d bytes from %s (revision %d)", n, cfg.EtcdEndpoint, m.Etcd.Revision)
	return nil
}

func snapshotShard(ctx context.Context, st *stores, cfg SnapshotConfig, shard int) (ShardPart, error) {
	var recs []*pb.BackupRecord
	part := ShardPart{Shard: shard, File: fmt.Sprintf("store/shard-%03d.records", shard)}
	err := retry(ctx, func() (bool, error) {
		return st.onLeader(ctx, shard, func(addr string, adm pb.StoreAdminServiceClient) error {
			r, idx, _, err := readShard(ctx, adm, shard)
			if err != nil {
				return err
			}
			recs, part.ReadIndex, part.Store = r, idx, addr
			return nil
		})
	})
	if err != nil {
		return part, fmt.Errorf("backup: shard %d: %w", shard, err)
	}
	for _, r := range recs {
		// The sessions bucket also keeps request records beside their
		// session ("id 0x00 request_id"; session ids never hold 0x00).
		if r.GetBucket() == "sessions" && !bytes.Contains(r.GetKey(), []byte{0}) {
			part.Sessions++
		}
	}
	part.Records = len(recs)
	part.SHA256, part.Bytes, err = writeFileSynced(filepath.Join(cfg.Dir, part.File), func(w io.Writer) error {
		for _, r := range recs {
			if _, err := protodelim.MarshalTo(w, r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return part, fmt.Errorf("backup: shard %d: %w", shard, err)
	}
	return part, nil
}
