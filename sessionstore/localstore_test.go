package sessionstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// boltStorage is a single-replica storage for the state machine's unit
// tests: applyCommand on one local bbolt file, one root bucket per shard,
// no replication.
type boltStorage struct {
	db *bolt.DB
}

var metaBucket = []byte("meta")

func shardRoot(shard int) []byte { return fmt.Appendf(nil, "shard/%04d", shard) }

func openBolt(dataDir, nodeID string) (*boltStorage, error) {
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return nil, err
	}
	path := filepath.Join(dataDir, "test.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: locked", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		return b.Put([]byte("node_id"), []byte(nodeID))
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return &boltStorage{db: db}, nil
}

func (s *boltStorage) apply(_ context.Context, cmd command) (outcome, error) {
	var out outcome
	err := s.db.Update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(shardRoot(cmd.Shard))
		if err != nil {
			return err
		}
		out, err = applyCommand(root, cmd)
		return err
	})
	if err != nil {
		return outcome{}, err
	}
	return out, nil
}

func (s *boltStorage) view(_ context.Context, shard int, fn func(shardTx) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return fn(shardTx{root: tx.Bucket(shardRoot(shard))})
	})
}

func (s *boltStorage) nowMs(int) int64 { return time.Now().UnixMilli() }

func (s *boltStorage) close() error { return s.db.Close() }
