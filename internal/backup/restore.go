package backup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/erlmcp/erlmcp/internal/clusterstate"
	"github.com/erlmcp/erlmcp/internal/embedetcd"
	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	etcdsnapshot "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protodelim"
)

// EtcdRestoreConfig restores the etcd of a backup into a member's data dir.
type EtcdRestoreConfig struct {
	// Backup is the backup dir.
	Backup string
	// DataDir is the etcd member's data dir to create; it must not exist
	// or be empty.
	DataDir string
	// Name, PeerURL and ClientURL are the member's, as it will be started
	// (`erlmcp up`'s embedded etcd: erlmcp-up and its --etcd-*-port URLs).
	Name, PeerURL, ClientURL string
	Prefix                   string
	// RevisionBump raises the restored revision above any a client may
	// have seen (and marks it compacted), so a watcher from before never
	// takes the restored history for newer events.
	RevisionBump uint64
	Progress     io.Writer
}

// DefaultEtcdRestoreConfig has the defaults of `erlmcp up`'s embedded etcd.
func DefaultEtcdRestoreConfig() EtcdRestoreConfig {
	return EtcdRestoreConfig{Name: "erlmcp-up", PeerURL: "http://127.0.0.1:2380", ClientURL: "http://127.0.0.1:2379", Prefix: "/erlmcp/", RevisionBump: 1_000_000}
}

// Validate says what is missing.
func (c EtcdRestoreConfig) Validate() error {
	if c.Backup == "" || c.DataDir == "" || c.Name == "" || c.PeerURL == "" || c.ClientURL == "" || c.Prefix == "" {
		return errors.New("restore etcd: backup dir, data dir, member name, peer URL, client URL and prefix are all required")
	}
	return nil
}

// EtcdCleanup counts what RestoreEtcd dropped from the restored etcd.
type EtcdCleanup struct {
	Leases  int
	MapKeys int64
}

// RestoreEtcd creates cfg.DataDir from the backup's etcd snapshot
// (etcdutl's snapshot restore, which checks the snapshot's hash), then
// starts it alone once to drop what belongs to the processes of the old
// cluster and would confuse the new one: every lease (and with them the
// membership keys and the control-plane election key, which are leased:
// the new processes register afresh), and the shard map with the
// placement operations and replica status (shards/, ops/, status/: they
// name Raft replicas whose data is gone; the control plane places the
// shards afresh on the new, empty store nodes, and Load fills them).
// The cluster config, regions, history and operator settings stay.
func RestoreEtcd(ctx context.Context, cfg EtcdRestoreConfig) (EtcdCleanup, error) {
	var clean EtcdCleanup
	if err := cfg.Validate(); err != nil {
		return clean, err
	}
	m, err := ReadManifest(cfg.Backup)
	if err != nil {
		return clean, err
	}
	if m.Prefix != cfg.Prefix {
		return clean, fmt.Errorf("restore etcd: the backup's prefix is %q, the cluster's %q", m.Prefix, cfg.Prefix)
	}
	if entries, err := os.ReadDir(cfg.DataDir); err == nil && len(entries) > 0 {
		return clean, fmt.Errorf("restore etcd: %s already holds etcd data; move it away (or start from an empty data dir) first", cfg.DataDir)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.DataDir), 0o700); err != nil {
		return clean, fmt.Errorf("restore etcd: %w", err)
	}
	err = etcdsnapshot.NewV3(zap.NewNop()).Restore(etcdsnapshot.RestoreConfig{
		SnapshotPath:        filepath.Join(cfg.Backup, m.Etcd.File),
		Name:                cfg.Name,
		OutputDataDir:       cfg.DataDir,
		PeerURLs:            []string{cfg.PeerURL},
		InitialCluster:      cfg.Name + "=" + cfg.PeerURL,
		InitialClusterToken: "etcd-cluster", // embed's default, which up uses
		RevisionBump:        cfg.RevisionBump,
		MarkCompacted:       cfg.RevisionBump > 0,
	})
	if err != nil {
		return clean, fmt.Errorf("restore etcd from %s into %s: %w", filepath.Join(cfg.Backup, m.Etcd.File), cfg.DataDir, err)
	}
	progress(cfg.Progress, "restore: etcd snapshot (revision %d) restored into %s", m.Etcd.Revision, cfg.DataDir)

	ec := embedetcd.DefaultConfig(cfg.DataDir)
	ec.Name, ec.ClientURL, ec.PeerURL = cfg.Name, cfg.ClientURL, cfg.PeerURL
	srv, err := embedetcd.Start(ctx, ec)
	if err != nil {
		return clean, fmt.Errorf("restore etcd: start the restored member to clean it: %w", err)
	}
	defer srv.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cfg.ClientURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return clean, fmt.Errorf("restore etcd: %w", err)
	}
	defer cli.Close()
	leases, err := cli.Leases(ctx)
	if err != nil {
		return clean, fmt.Errorf("restore etcd: list leases: %w", err)
	}
	for _, l := range leases.Leases {
		if _, err := cli.Revoke(ctx, l.ID); err != nil {
			return clean, fmt.Errorf("restore etcd: revoke lease %x: %w", l.ID, err)
		}
		clean.Leases++
	}
	for _, p := range []string{clusterstate.ShardsPrefix(cfg.Prefix), cfg.Prefix + "ops/", cfg.Prefix + "status/"} {
		resp, err := cli.Delete(ctx, p, clientv3.WithPrefix())
		if err != nil {
			return clean, fmt.Errorf("restore etcd: delete %s: %w", p, err)
		}
		clean.MapKeys += resp.Deleted
	}
	progress(cfg.Progress, "restore: etcd cleaned: %d leases of the old processes revoked (their membership and election keys with them), %d shard map/operation/status keys dropped", clean.Leases, clean.MapKeys)
	return clean, nil
}

// LoadConfig loads a backup's shard dumps into a running cluster.
type LoadConfig struct {
	EtcdEndpoints []string
	Prefix        string
	Backup        string
	// Timeout bounds the whole load, including the wait for the shards to
	// be placed and led.
	Timeout  time.Duration
	Progress io.Writer
}

// DefaultLoadConfig has the defaults but the endpoints and backup dir.
func DefaultLoadConfig() LoadConfig {
	return LoadConfig{Prefix: "/erlmcp/", Timeout: 5 * time.Minute}
}

// Validate says what is missing.
func (c LoadConfig) Validate() error {
	switch {
	case len(c.EtcdEndpoints) == 0:
		return errors.New("load: no etcd endpoint")
	case c.Backup == "":
		return errors.New("load: no backup dir")
	case c.Timeout <= 0:
		return fmt.Errorf("load: timeout %s: want more than 0", c.Timeout)
	}
	return nil
}

// Load imports every shard dump of the backup through the shards' leaders
// (StoreAdminService.Import, in chunks). The import id is derived from the
// backup, so a Load cut short and run again resumes where it stopped
// (chunks already applied answer OK); a cluster that holds other sessions
// is refused.
func Load(ctx context.Context, cfg LoadConfig) (sessions int, err error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	m, err := ReadManifest(cfg.Backup)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0, fmt.Errorf("load: etcd %v: %w", cfg.EtcdEndpoints, err)
	}
	defer cli.Close()
	cc, err := clusterstate.GetConfig(ctx, cli, cfg.Prefix)
	if err != nil {
		return 0, fmt.Errorf("load: %w", err)
	}
	if cc.ShardCount != m.ShardCount {
		return 0, fmt.Errorf("load: the backup has %d shards, the cluster %d: restore into a cluster created with as many shards", m.ShardCount, cc.ShardCount)
	}
	restoreID := fmt.Sprintf("backup-%s-%s", m.CreatedAt.Format("20060102T150405.000000000Z"), m.Etcd.SHA256[:min(12, len(m.Etcd.SHA256))])
	st := newStores(cli, cfg.Prefix)
	defer st.close()
	for _, part := range m.Shards {
		recs, err := readRecords(filepath.Join(cfg.Backup, part.File))
		if err != nil {
			return sessions, fmt.Errorf("load: shard %d: %w", part.Shard, err)
		}
		chunks := chunk(recs)
		for seq, c := range chunks {
			req := &pb.ImportRequest{Shard: uint32(part.Shard), RestoreId: restoreID, Seq: uint64(seq), Records: c, ShardCount: uint32(m.ShardCount)}
			err := retry(ctx, func() (bool, error) {
				return st.onLeader(ctx, part.Shard, func(_ string, adm pb.StoreAdminServiceClient) error {
					_, err := adm.Import(ctx, req)
					return err
				})
			})
			if err != nil {
				return sessions, fmt.Errorf("load: shard %d chunk %d of %d: %w", part.Shard, seq, len(chunks), err)
			}
		}
		sessions += part.Sessions
		if part.Sessions > 0 {
			progress(cfg.Progress, "restore: shard %03d: %d sessions, %d records loaded in %d chunks", part.Shard, part.Sessions, part.Records, len(chunks))
		}
	}
	progress(cfg.Progress, "restore: sessions loaded: %d in %d shards (import %s)", sessions, m.ShardCount, restoreID)
	return sessions, nil
}

func readRecords(path string) ([]*pb.BackupRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var out []*pb.BackupRecord
	for {
		r := &pb.BackupRecord{}
		err := protodelim.UnmarshalFrom(br, r)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		out = append(out, r)
	}
}

// importChunkBytes bounds one Import chunk: it is one Raft entry, JSON
// (base64) encoded on the way, well under the Raft message limit of 1 MiB.
const importChunkBytes = 256 << 10

// chunk cuts recs into chunks of about importChunkBytes; an empty dump is
// one empty chunk (it still records the import in the shard).
func chunk(recs []*pb.BackupRecord) [][]*pb.BackupRecord {
	out := [][]*pb.BackupRecord{nil}
	size := 0
	for _, r := range recs {
		n := len(r.GetBucket()) + len(r.GetKey()) + len(r.GetValue())
		if size > 0 && size+n > importChunkBytes {
			out = append(out, nil)
			size = 0
		}
		out[len(out)-1] = append(out[len(out)-1], r)
		size += n
	}
	return out
}
