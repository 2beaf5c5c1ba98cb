package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// DBFile is the bbolt file's name inside the data dir.
const DBFile = "store.db"

var metaBucket = []byte("meta")

// boltStorage keeps every shard this node hosts in one bbolt file. Every
// write transaction is fsynced before it is acknowledged (bbolt's default);
// concurrent writes share one transaction and fsync through db.Batch.
type boltStorage struct {
	db *bolt.DB
}

// openBolt opens (creating if needed) dataDir/store.db. The file records
// the node id that created it; opening it as another node is refused, so
// two nodes never serve one node's data under different names.
func openBolt(dataDir, nodeID string) (*boltStorage, error) {
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", dataDir, err)
	}
	path := filepath.Join(dataDir, DBFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: the file is locked by another process (is another store node using --data-dir %s?)", path, dataDir)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.MaxBatchDelay = 2 * time.Millisecond
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		owner := b.Get([]byte("node_id"))
		switch {
		case owner == nil:
			return b.Put([]byte("node_id"), []byte(nodeID))
		case string(owner) != nodeID:
			return fmt.Errorf("data dir %s belongs to store node %q, not %q: start it with --id %s or give this node another --data-dir", dataDir, owner, nodeID, owner)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &boltStorage{db: db}, nil
}

func (s *boltStorage) apply(_ context.Context, cmd command) (outcome, error) {
	var out outcome
	err := s.db.Batch(func(tx *bolt.Tx) error {
		var err error
		out, err = applyCommand(tx, cmd)
		return err
	})
	if err != nil {
		return outcome{}, err
	}
	return out, nil
}

func (s *boltStorage) read(_ context.Context, shard int, id string) (*pb.Session, error) {
	var rec *pb.Session
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = getRecord(tx.Bucket(sessionsBucket(shard)), id)
		return err
	})
	return rec, err
}

func (s *boltStorage) view(_ context.Context, fn func(*bolt.Tx) error) error {
	return s.db.View(fn)
}

func (s *boltStorage) close() error { return s.db.Close() }
