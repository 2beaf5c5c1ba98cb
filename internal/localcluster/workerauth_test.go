package localcluster

import (
	"slices"
	"testing"

	"github.com/erlmcp/erlmcp/internal/membership"
)

// TestPlanWorkerAuth: up's worker auth settings reach every worker, and
// only workers.
func TestPlanWorkerAuth(t *testing.T) {
	c := DefaultConfig()
	c.DataDir = "/tmp/x"
	c.WorkerAuthTokens = "/etc/erlmcp/tokens"
	c.WorkerAuthPrincipalHeader = "X-Auth-Principal"
	p, err := c.Plan()
	if err != nil {
		t.Fatal(err)
	}
	workers := 0
	for _, ch := range p.Children {
		hasTokens := slices.Contains(ch.Args, "--auth-tokens=/etc/erlmcp/tokens")
		hasHeader := slices.Contains(ch.Args, "--auth-principal-header=X-Auth-Principal")
		isWorker := ch.Role == membership.RoleWorker
		if hasTokens != isWorker || hasHeader != isWorker {
			t.Errorf("%s args %q: auth flags present %v/%v, want %v", ch.Name, ch.Args, hasTokens, hasHeader, isWorker)
		}
		if isWorker {
			workers++
		}
	}
	if workers != c.Workers {
		t.Fatalf("%d workers planned, want %d", workers, c.Workers)
	}
}
