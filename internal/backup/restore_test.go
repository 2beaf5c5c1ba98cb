package backup

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/erlmcp/erlmcp/internal/embedetcd"
	"github.com/erlmcp/erlmcp/internal/testcluster"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestRestoreEtcdDropsStaleState: an etcd snapshot with leased membership
// and election keys, a shard map and operations restores into a new data
// dir holding the cluster config and regions only: no lease, no key of
// the old processes, no shard map; its revision is above the old one. A
// data dir that holds etcd data already is refused.
func TestRestoreEtcdDropsStaleState(t *testing.T) {
	e := testcluster.StartEtcd(t)
	cli := e.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := e.Prefix
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{p + "config/cluster": `{"shard_count":1}`, p + "regions/us": `{"name":"us"}`,
		p + "shards/000": `{"shard":0}`, p + "ops/x": `{}`, p + "status/shards/000/s1": `{}`} {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{p + "members/store/s1", p + "election/controlplane/1"} {
		if _, err := cli.Put(ctx, k, "{}", clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	m := Manifest{Format: manifestFormat, CreatedAt: time.Now(), Prefix: p, ShardCount: 1}
	if err := snapshotEtcd(ctx, cli, SnapshotConfig{EtcdEndpoint: e.Endpoint, Dir: dir}, &m); err != nil {
		t.Fatal(err)
	}
	part := ShardPart{Shard: 0, File: "shard-000"}
	part.SHA256, part.Bytes, err = writeFileSynced(filepath.Join(dir, part.File), func(io.Writer) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	m.Shards = []ShardPart{part}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, ManifestName), b, 0o600); err != nil {
		t.Fatal(err)
	}

	cfg := DefaultEtcdRestoreConfig()
	cfg.Backup, cfg.DataDir, cfg.Prefix = dir, filepath.Join(t.TempDir(), "etcd"), p
	cfg.ClientURL, cfg.PeerURL = "http://"+testcluster.FreeAddr(t), "http://"+testcluster.FreeAddr(t)
	var progress strings.Builder
	cfg.Progress = &progress
	clean, err := RestoreEtcd(ctx, cfg)
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, progress.String())
	}
	if clean.Leases != 1 || clean.MapKeys != 3 {
		t.Fatalf("cleanup %+v, want 1 lease and 3 map/op/status keys", clean)
	}
	if _, err := RestoreEtcd(ctx, cfg); err == nil || !strings.Contains(err.Error(), "already holds etcd data") {
		t.Fatalf("restore into a data dir with etcd data: %v", err)
	}

	ec := embedetcd.DefaultConfig(cfg.DataDir)
	ec.Name, ec.ClientURL, ec.PeerURL = cfg.Name, cfg.ClientURL, cfg.PeerURL
	srv, err := embedetcd.Start(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc, err := clientv3.New(clientv3.Config{Endpoints: []string{cfg.ClientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	resp, err := rc.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, strings.TrimPrefix(string(kv.Key), p))
	}
	if strings.Join(keys, ",") != "config/cluster,regions/us" {
		t.Fatalf("restored keys %v, want only config/cluster and regions/us", keys)
	}
	if ls, err := rc.Leases(ctx); err != nil || len(ls.Leases) != 0 {
		t.Fatalf("restored leases %v (%v), want none", ls, err)
	}
	if resp.Header.Revision < m.Etcd.Revision+int64(cfg.RevisionBump) {
		t.Fatalf("restored revision %d, want above %d + bump %d", resp.Header.Revision, m.Etcd.Revision, cfg.RevisionBump)
	}
}
