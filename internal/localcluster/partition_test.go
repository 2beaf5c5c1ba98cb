package localcluster

import (
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// echoServer answers every byte back.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return l.Addr().String()
}

// roundTrip sends one byte and says whether it came back within d.
func roundTrip(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	if _, err := c.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(d))
	b := make([]byte, 1)
	_, err := io.ReadFull(c, b)
	return err == nil
}

// TestStoreProxyPartition: traffic to a cut-off store stalls and resumes
// when healed; so does traffic a cut-off store process sends to another
// store, told apart by the process owning the socket (here: this test,
// standing in for store-1).
func TestStoreProxyPartition(t *testing.T) {
	dir := t.TempDir()
	freeAddr := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	proxyAddr := freeAddr()
	echo := echoServer(t)
	pidOf := func(name string) int {
		if name == "store-1" {
			return os.Getpid()
		}
		return 0
	}
	ps := newProxySet([]storeProxy{{id: "store-1", listen: freeAddr(), target: echo}, {id: "store-2", listen: proxyAddr, target: echo}},
		dir, pidOf, logrus.NewEntry(logrus.New()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := ps.start(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !roundTrip(t, c, 5*time.Second) {
		t.Fatal("no echo through the proxy")
	}
	for _, cut := range []string{"store-2", "store-1"} {
		if err := os.WriteFile(PartitionFile(dir), []byte(cut+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // the proxies poll every 50 ms
		if roundTrip(t, c, 500*time.Millisecond) {
			t.Fatalf("%s cut off, yet bytes went through", cut)
		}
		if err := os.Remove(PartitionFile(dir)); err != nil {
			t.Fatal(err)
		}
		// The stalled byte and its echo arrive once healed.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("after healing %s: %v", cut, err)
		}
		if !roundTrip(t, c, 5*time.Second) {
			t.Fatalf("no echo after healing %s", cut)
		}
	}
	// A store not involved passes through.
	if err := os.WriteFile(PartitionFile(dir), []byte("store-3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if !roundTrip(t, c, 5*time.Second) {
		t.Fatal("store-3 cut off stalled traffic between store-1 and store-2")
	}
}
