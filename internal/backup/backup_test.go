package backup

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/protobuf/encoding/protodelim"
)

func TestChunk(t *testing.T) {
	if c := chunk(nil); len(c) != 1 || len(c[0]) != 0 {
		t.Fatalf("empty dump: %d chunks, want one empty chunk", len(c))
	}
	var recs []*pb.BackupRecord
	for range 10 {
		recs = append(recs, &pb.BackupRecord{Bucket: "b", Key: []byte("k"), Value: bytes.Repeat([]byte("v"), 100<<10)})
	}
	cs := chunk(recs)
	n := 0
	for i, c := range cs {
		size := 0
		for _, r := range c {
			size += len(r.GetBucket()) + len(r.GetKey()) + len(r.GetValue())
		}
		if len(c) == 0 || size > importChunkBytes {
			t.Fatalf("chunk %d: %d records, %d bytes (limit %d)", i, len(c), size, importChunkBytes)
		}
		n += len(c)
	}
	if n != len(recs) || len(cs) < 4 {
		t.Fatalf("%d records in %d chunks, want all %d in at least 4", n, len(cs), len(recs))
	}
	// A record larger than a chunk still travels, alone.
	big := []*pb.BackupRecord{{Bucket: "b", Key: []byte("k"), Value: make([]byte, importChunkBytes+1)}, {Bucket: "b", Key: []byte("k2")}}
	if cs := chunk(big); len(cs) != 2 || len(cs[0]) != 1 {
		t.Fatalf("oversized record: %d chunks", len(cs))
	}
}

// TestManifestChecks: a backup reads back; a changed file, a missing shard
// dump or another format is refused, naming what is wrong.
func TestManifestChecks(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "store"), 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name string, body []byte) (string, int64) {
		sum, n, err := writeFileSynced(filepath.Join(dir, name), func(w io.Writer) error { _, err := w.Write(body); return err })
		if err != nil {
			t.Fatal(err)
		}
		return sum, n
	}
	m := Manifest{Format: manifestFormat, CreatedAt: time.Now(), Prefix: "/erlmcp/", ShardCount: 2}
	m.Etcd.File = etcdFile
	m.Etcd.SHA256, m.Etcd.Bytes = write(etcdFile, []byte("etcd"))
	for s := range 2 {
		var buf bytes.Buffer
		if _, err := protodelim.MarshalTo(&buf, &pb.BackupRecord{Bucket: "sessions", Key: []byte{byte('a' + s)}, Value: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		p := ShardPart{Shard: s, File: filepath.Join("store", "shard-"+string(rune('0'+s))), Records: 1, Sessions: 1}
		p.SHA256, p.Bytes = write(p.File, buf.Bytes())
		m.Shards = append(m.Shards, p)
	}
	save := func(m Manifest) {
		b, _ := json.Marshal(m)
		write(ManifestName, b)
	}
	save(m)
	got, err := ReadManifest(dir)
	if err != nil || got.ShardCount != 2 {
		t.Fatalf("read: %v %+v", err, got)
	}
	recs, err := readRecords(filepath.Join(dir, m.Shards[1].File))
	if err != nil || len(recs) != 1 || string(recs[0].GetKey()) != "b" {
		t.Fatalf("records of shard 1: %v %v", recs, err)
	}

	if err := os.WriteFile(filepath.Join(dir, m.Shards[1].File), []byte("tampered"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManifest(dir); err == nil || !strings.Contains(err.Error(), "corrupt or changed") {
		t.Fatalf("changed shard file: %v", err)
	}
	short := m
	short.Shards = m.Shards[:1]
	save(short)
	if _, err := ReadManifest(dir); err == nil || !strings.Contains(err.Error(), "incomplete backup") {
		t.Fatalf("missing shard dump: %v", err)
	}
	other := m
	other.Format = 99
	save(other)
	if _, err := ReadManifest(dir); err == nil || !strings.Contains(err.Error(), "format 99") {
		t.Fatalf("other format: %v", err)
	}
}
