package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/erlmcp/erlmcp/internal/membership"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// probeTimeout bounds one member's health probe.
const probeTimeout = time.Second

// MemberStatus is one entry of GET /v1/members.
type MemberStatus struct {
	Role    string `json:"role"`
	ID      string `json:"id"`
	Addr    string `json:"addr"`
	Region  string `json:"region"`
	Zone    string `json:"zone"`
	PID     int    `json:"pid"`
	Healthy bool   `json:"healthy"`
	// ProbeError says why the probe failed (empty when healthy).
	ProbeError string `json:"probe_error,omitempty"`
}

// prober checks members' health: HTTP roles by GET /healthz, store nodes by
// the gRPC health service.
type prober struct {
	http *http.Client
}

func newProber() *prober {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4
	return &prober{http: &http.Client{Timeout: probeTimeout, Transport: tr}}
}

// statuses probes every member concurrently, each within probeTimeout.
func (p *prober) statuses(ctx context.Context, ms []membership.Member) []MemberStatus {
	out := make([]MemberStatus, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		out[i] = MemberStatus{Role: m.Role, ID: m.ID, Addr: m.Addr, Region: m.Region, Zone: m.Zone, PID: m.PID}
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			if err := p.probe(pctx, m); err != nil {
				out[i].ProbeError = err.Error()
			} else {
				out[i].Healthy = true
			}
		})
	}
	wg.Wait()
	return out
}

func (p *prober) probe(ctx context.Context, m membership.Member) error {
	if m.Role == membership.RoleStore {
		return probeGRPC(ctx, m.Addr)
	}
	addr := m.Addr
	if m.HTTPAddr != "" {
		addr = m.HTTPAddr
	}
	return p.probeHTTP(ctx, addr)
}

func (p *prober) probeHTTP(ctx context.Context, addr string) error {
	if addr == "" {
		return fmt.Errorf("no address registered")
	}
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /healthz: %s", resp.Status)
	}
	return nil
}

func probeGRPC(ctx context.Context, addr string) error {
	if addr == "" {
		return fmt.Errorf("no address registered")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("grpc health check: %v", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpc health: %s", resp.GetStatus())
	}
	return nil
}
