package multiraft

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A machine crash after a checkpoint may leave raft.db with any mix of the
// pages written since (a newer meta page whose tree never reached the
// disk, pages of later transactions half there). Opening it rolls back to
// the checkpoint, which is intact because no later transaction reused its
// pages (the pin). Without the rollback bbolt would open a newer meta
// page over stale pages; without the pin, the checkpoint's own pages would
// have been overwritten.
func TestCheckpointSurvivesTornWrites(t *testing.T) {
	dir := t.TempDir()
	db, ck, err := openDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	const keys = 300
	put := func(val string) {
		t.Helper()
		err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			for i := range keys {
				if err := b.Put(fmt.Appendf(nil, "k%04d", i), bytes.Repeat([]byte(val), 40)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	put("a")
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := ck.save(db); err != nil {
		t.Fatal(err)
	}
	pageSize := db.Info().PageSize
	atCheckpoint := readAll(t, filepath.Join(dir, "raft.db"))
	// Later transactions, never checkpointed: every key rewritten many
	// times, so bbolt reuses every page it is allowed to.
	for i := range 40 {
		put(fmt.Sprint(i % 10))
	}
	later := readAll(t, filepath.Join(dir, "raft.db"))
	ckMeta := readAll(t, filepath.Join(dir, checkpointFileName))
	ck.close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if len(later) < len(atCheckpoint) {
		t.Fatalf("raft.db shrank: %d -> %d bytes", len(atCheckpoint), len(later))
	}

	for seed := range uint64(12) {
		rng := rand.New(rand.NewPCG(seed, 1))
		// The disk after the crash: each page as of the checkpoint or as
		// written later (the newest meta pages always among the later
		// ones for seed 0, to be sure the rollback is needed).
		img := append([]byte(nil), later...)
		for p := 0; p*pageSize < len(atCheckpoint); p++ {
			keepOld := rng.IntN(2) == 0
			if seed == 0 && p < 2 {
				keepOld = false
			}
			if keepOld {
				copy(img[p*pageSize:(p+1)*pageSize], atCheckpoint[p*pageSize:(p+1)*pageSize])
			}
		}
		cdir := t.TempDir()
		if err := os.WriteFile(filepath.Join(cdir, "raft.db"), img, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cdir, checkpointFileName), ckMeta, 0o600); err != nil {
			t.Fatal(err)
		}
		db, ck, err := openDB(cdir)
		if err != nil {
			t.Fatalf("seed %d: open after the crash: %v", seed, err)
		}
		err = db.View(func(tx *bolt.Tx) error {
			var checkErr error
			for err := range tx.Check() { // drained: the checker goroutine ends
				checkErr = errors.Join(checkErr, err)
			}
			if checkErr != nil {
				return fmt.Errorf("bbolt check: %w", checkErr)
			}
			b := tx.Bucket([]byte("b"))
			if b == nil {
				return fmt.Errorf("bucket missing")
			}
			for i := range keys {
				if v := b.Get(fmt.Appendf(nil, "k%04d", i)); !bytes.Equal(v, bytes.Repeat([]byte("a"), 40)) {
					return fmt.Errorf("k%04d = %.10q..., want the checkpoint's value", i, v)
				}
			}
			return nil
		})
		ck.close()
		_ = db.Close()
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
}

// A raft.db older than its checkpoint record (the record cannot be
// trusted, or raft.db was replaced) fails the open instead of being used.
func TestCheckpointNewerThanDBIsCorrupt(t *testing.T) {
	dir := t.TempDir()
	db, ck, err := openDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := readAll(t, filepath.Join(dir, "raft.db"))
	for range 3 {
		if err := db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists([]byte("x"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := ck.save(db); err != nil {
		t.Fatal(err)
	}
	ck.close()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "raft.db"), old, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openDB(dir); err == nil || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of a raft.db older than its checkpoint: %v, want ErrCorrupt", err)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A raft.db that grows near its mapping makes the node fall back to
// bbolt's fsync per commit (syncMode): no pin, no raft.db.meta; writes go
// on, and a restart without raft.db.meta keeps every acknowledged write.
func TestCheckpointFallsBackToSyncMode(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.bootstrap(1)
	c.mustPut(1, "k", "a")
	n := c.node(1)
	n.writeMu.Lock()
	n.ck.limit = 1 // any raft.db is too big now
	n.writeMu.Unlock()
	c.mustPut(1, "k", "b")
	waitFor(t, 10*time.Second, "store 1 in sync mode", func() bool {
		n.writeMu.Lock()
		defer n.writeMu.Unlock()
		return n.ck != nil && n.ck.syncMode && n.ck.pin == nil && !n.db().NoSync
	})
	if _, err := os.Stat(filepath.Join(n.cfg.Dir, checkpointFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still there in sync mode: %v", checkpointFileName, err)
	}
	for i := range 20 {
		c.mustPut(1, "k", fmt.Sprint("c", i))
	}
	c.waitValue(1, "k", "c19", 10*time.Second)
	c.kill(1)
	c.restart(1)
	c.waitValue(1, "k", "c19", 10*time.Second)
	c.mustPut(1, "k", "d")
	c.waitValue(1, "k", "d", 10*time.Second)
}
