package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Test credentials: the tokens file holds only their hashes.
const (
	tokAlice            = "alice-secret-token"
	tokBob              = "bob-secret-token"
	testPrincipalHeader = "X-Auth-Principal"
)

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// writeTokens writes an auth tokens file for alice and bob.
func writeTokens(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	body := "# sha256(token) principal\n\n" + sha256Hex(tokAlice) + " alice\nsha256:" + strings.ToUpper(sha256Hex(tokBob)) + "  bob\n"
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// withTestAuth turns auth on: alice's and bob's tokens and the trusted
// header testPrincipalHeader.
func withTestAuth(t *testing.T) Option {
	path := writeTokens(t)
	return func(h *Handler) {
		h.cfg.AuthTokensFile = path
		h.cfg.AuthPrincipalHeader = testPrincipalHeader
	}
}

// initSessionWith initializes a session with extra headers.
func initSessionWith(t *testing.T, url string, extra map[string]string) string {
	t.Helper()
	r := post(t, url, initBody, extra)
	sid := r.header.Get(HeaderSessionID)
	if r.status != http.StatusOK || r.rpc.Error != nil || sid == "" {
		t.Fatalf("initialize: %d %s", r.status, r.body)
	}
	return sid
}

func TestLoadAuthTokens(t *testing.T) {
	tokens, err := LoadAuthTokens(writeTokens(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 2 || tokens[sha256.Sum256([]byte(tokAlice))] != "alice" || tokens[sha256.Sum256([]byte(tokBob))] != "bob" {
		t.Fatalf("tokens = %v", tokens)
	}
	dir := t.TempDir()
	for name, body := range map[string]string{
		"empty":         "# nothing\n",
		"short hash":    "abcd alice\n",
		"not hex":       strings.Repeat("z", 64) + " alice\n",
		"no principal":  sha256Hex("x") + "\n",
		"two principal": sha256Hex("x") + " alice\n" + sha256Hex("x") + " bob\n",
		"bad principal": sha256Hex("x") + " al ice\n",
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadAuthTokens(path); err == nil || !strings.Contains(err.Error(), "--auth-tokens") {
			t.Errorf("%s: err = %v, want an --auth-tokens error", name, err)
		}
	}
	if _, err := LoadAuthTokens(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file loaded")
	}
	cfg := DefaultConfig()
	cfg.AuthTokensFile = filepath.Join(dir, "missing")
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--auth-tokens") {
		t.Errorf("Validate with a missing tokens file: %v", err)
	}
	cfg = DefaultConfig()
	cfg.AuthPrincipalHeader = "X Principal"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--auth-principal-header") {
		t.Errorf("Validate with a bad header name: %v", err)
	}
}

// TestRealStoreAuthAcrossWorkers: a session initialized by alice on A is
// served to alice on B and to nobody else on any worker. B never saw the
// session: it can only check the principal stored in the record.
func TestRealStoreAuthAcrossWorkers(t *testing.T) {
	e, cli := realStore(t)
	a := testWorker(t, StoreFromClient(storeClient(t, e, cli)), "worker-a", withTestAuth(t))
	b := testWorker(t, StoreFromClient(storeClient(t, e, cli)), "worker-b", withTestAuth(t))
	open := testWorker(t, StoreFromClient(storeClient(t, e, cli)), "worker-open")

	sid := initSessionWith(t, a.URL, map[string]string{"Authorization": "Bearer " + tokAlice})
	s, err := storeClient(t, e, cli).Get(context.Background(), sid, false)
	if err != nil {
		t.Fatal(err)
	}
	var rec sessionRecord
	mustUnmarshal(t, s.Data, &rec)
	if rec.Principal != "alice" {
		t.Fatalf("stored principal %q, want alice", rec.Principal)
	}
	as := func(auth map[string]string) map[string]string {
		h := sessionHeaders(sid)
		for k, v := range auth {
			h[k] = v
		}
		return h
	}
	aliceTok := map[string]string{"Authorization": "Bearer " + tokAlice}
	bobTok := map[string]string{"Authorization": "Bearer " + tokBob}
	echo := `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`

	// Bob, on either worker, by token or trusted header: not found.
	for _, tc := range []struct {
		name, url string
		auth      map[string]string
	}{
		{"bob token on A", a.URL, bobTok},
		{"bob token on B", b.URL, bobTok},
		{"bob header on B", b.URL, map[string]string{testPrincipalHeader: "bob"}},
		{"no auth worker", open.URL, nil},
	} {
		if r := post(t, tc.url, echo, as(tc.auth)); r.status != http.StatusNotFound || r.rpc.Error == nil || r.rpc.Error.Code != CodeSessionNotFound {
			t.Errorf("%s: tools/call = %d %s, want 404", tc.name, r.status, r.body)
		}
		req, _ := http.NewRequest(http.MethodGet, tc.url+"/mcp", nil)
		for k, v := range as(tc.auth) {
			req.Header.Set(k, v)
		}
		req.Header.Set("Accept", "text/event-stream")
		if r := do(t, req); r.status != http.StatusNotFound {
			t.Errorf("%s: GET = %d %s, want 404", tc.name, r.status, r.body)
		}
		req, _ = http.NewRequest(http.MethodDelete, tc.url+"/mcp", nil)
		for k, v := range as(tc.auth) {
			req.Header.Set(k, v)
		}
		if r := do(t, req); r.status != http.StatusNotFound {
			t.Errorf("%s: DELETE = %d %s, want 404", tc.name, r.status, r.body)
		}
	}
	// Alice, on B, by token and by the gateway's header.
	if r := post(t, b.URL, echo, as(aliceTok)); r.status != http.StatusOK || r.rpc.Error != nil || !strings.Contains(string(r.rpc.Result), "hi") {
		t.Fatalf("alice's tools/call on B: %d %s", r.status, r.body)
	}
	if r := post(t, b.URL, echo, as(map[string]string{testPrincipalHeader: "alice"})); r.status != http.StatusOK || r.rpc.Error != nil {
		t.Fatalf("alice (gateway header) on B: %d %s", r.status, r.body)
	}
	// Bob's attempts changed nothing: alice ends her session on B, and
	// then it is gone on A too.
	req, _ := http.NewRequest(http.MethodDelete, b.URL+"/mcp", nil)
	for k, v := range as(aliceTok) {
		req.Header.Set(k, v)
	}
	if r := do(t, req); r.status != http.StatusNoContent {
		t.Fatalf("alice's DELETE on B: %d %s", r.status, r.body)
	}
	if r := post(t, a.URL, echo, as(aliceTok)); r.status != http.StatusNotFound {
		t.Fatalf("after DELETE, alice on A: %d %s", r.status, r.body)
	}
}
