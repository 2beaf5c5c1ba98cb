package capacity

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testParams() Params {
	p := DefaultParams()
	p.WorkerRPS = 100
	p.StoreWritesPerSec = 1000
	p.TargetUtilization = 0.5
	p.WritesPerRequest = 1
	p.MinWorkersPerRegion = 2
	p.MinStores = 3
	p.Quarters = 2
	p.GrowthPerQuarter = 1 // doubles each quarter: easy arithmetic
	return p
}

func TestMakeSurvivesLossOfLargestRegion(t *testing.T) {
	obs := Observed{Source: "t", Regions: []RegionLoad{
		{Name: "b", RPS: 300, Workers: 5, Stores: 6},
		{Name: "a", RPS: 600, Workers: 12, Stores: 2},
	}}
	pl, err := Make(obs, testParams())
	if err != nil {
		t.Fatal(err)
	}
	if pl.LargestRegion != "a" || pl.TotalRPS != 900 || pl.StoreWrites != 900 {
		t.Fatalf("largest %q total %v writes %v", pl.LargestRegion, pl.TotalRPS, pl.StoreWrites)
	}
	// 50 req/s per worker at 50 %: a needs 600/50 = 12; b carries 300+600 when a is lost: 18.
	want := map[string]RegionPlan{
		"a": {Name: "a", RPS: 600, RPSAfterLoss: 600, Workers: 12, WorkersNeeded: 12, Stores: 2, StoresNeeded: 6, WorkerUtilization: 0.5},
		"b": {Name: "b", RPS: 300, RPSAfterLoss: 900, Workers: 5, WorkersNeeded: 18, Stores: 6, StoresNeeded: 6, WorkerUtilization: 0.6},
	}
	if len(pl.Regions) != 2 || pl.Regions[0].Name != "a" {
		t.Fatalf("regions not sorted by name: %+v", pl.Regions)
	}
	for _, r := range pl.Regions {
		if r != want[r.Name] {
			t.Errorf("region %s: got %+v, want %+v", r.Name, r, want[r.Name])
		}
	}
	// 900 writes × RF 3 / (1000 × 0.5) = 5.4 → 6 nodes; with two regions
	// either one must hold all 6 alone.
	if pl.StoreCluster != 6 || pl.StoresNeeded != 12 || pl.WorkersNeeded != 30 {
		t.Errorf("store cluster %d, stores %d, workers %d", pl.StoreCluster, pl.StoresNeeded, pl.WorkersNeeded)
	}
	if len(pl.Quarters) != 2 || pl.Quarters[0].RPS != 1800 || pl.Quarters[1].RPS != 3600 {
		t.Fatalf("quarters %+v", pl.Quarters)
	}
	// Quarter 1 doubles everything: a 24, b 36 workers; stores 11 → 11 per region.
	if q := pl.Quarters[0]; q.WorkersNeeded != 60 || q.StoresNeeded != 22 {
		t.Errorf("quarter 1: %+v", q)
	}
	recs := actions(pl)
	for _, w := range []string{"add 13 worker(s) in b", "add 4 store node(s) in a", "budget for 120 workers"} {
		if !strings.Contains(recs, w) {
			t.Errorf("recommendations lack %q:\n%s", w, recs)
		}
	}
	if strings.Contains(recs, "in a (have 12") {
		t.Errorf("a has enough workers, yet:\n%s", recs)
	}
}

func actions(pl Plan) string {
	var b strings.Builder
	for _, r := range pl.Recommendations {
		b.WriteString(r.Action + " | " + r.Reason + "\n")
	}
	return b.String()
}

func TestMakeFloorsMemoryAndOverprovision(t *testing.T) {
	p := testParams()
	p.Quarters = 0
	p.SessionBytes = 1 << 10
	p.StoreMemoryBytes = 1 << 30
	// 3M sessions × 1 KiB × 3 / (1 GiB × 0.5) = 17.2 → 18 nodes, over the write need.
	obs := Observed{Sessions: 3_000_000, StoreWritesPerSec: 10, Regions: []RegionLoad{
		{Name: "a", RPS: 10, Workers: 20}, {Name: "b", RPS: 0}, {Name: "c", RPS: 0},
	}}
	pl, err := Make(obs, p)
	if err != nil {
		t.Fatal(err)
	}
	if pl.StoreCluster != 18 || pl.Regions[0].StoresNeeded != 9 {
		t.Errorf("store cluster %d, per region %d", pl.StoreCluster, pl.Regions[0].StoresNeeded)
	}
	// a's 10 req/s spreads evenly over b and c (who carry nothing) when a is lost.
	if pl.Regions[1].RPSAfterLoss != 5 || pl.Regions[2].RPSAfterLoss != 5 {
		t.Errorf("after loss: %+v", pl.Regions)
	}
	// Every region keeps the minimum.
	for _, r := range pl.Regions {
		if r.WorkersNeeded != 2 {
			t.Errorf("%s needs %d workers, want the floor 2", r.Name, r.WorkersNeeded)
		}
	}
	if recs := actions(pl); !strings.Contains(recs, "remove up to 18 worker(s) in a") {
		t.Errorf("over-provisioned region not flagged:\n%s", recs)
	}
}

func TestMakeSingleRegionAndLatency(t *testing.T) {
	p := testParams()
	pl, err := Make(Observed{Regions: []RegionLoad{{Name: "only", RPS: 100, Workers: 2, Stores: 3, P95Seconds: 0.25, CPUUtilization: 0.9}}}, p)
	if err != nil {
		t.Fatal(err)
	}
	recs := actions(pl)
	for _, w := range []string{"add a second region", "investigate latency in only", "p95 250 ms"} {
		if !strings.Contains(recs, w) {
			t.Errorf("recommendations lack %q:\n%s", w, recs)
		}
	}
	if pl.Regions[0].StoresNeeded != 3 {
		t.Errorf("single region stores %d, want 3", pl.Regions[0].StoresNeeded)
	}
}

func TestValidate(t *testing.T) {
	good := Observed{Regions: []RegionLoad{{Name: "a", RPS: 1}}}
	for name, mut := range map[string]func(*Params){
		"worker rps":  func(p *Params) { p.WorkerRPS = 0 },
		"store":       func(p *Params) { p.StoreWritesPerSec = -1 },
		"utilization": func(p *Params) { p.TargetUtilization = 1.5 },
		"rf":          func(p *Params) { p.ReplicationFactor = 0 },
		"quarters":    func(p *Params) { p.Quarters = 41 },
		"growth":      func(p *Params) { p.GrowthPerQuarter = -2 },
		"memory":      func(p *Params) { p.SessionBytes = 0 },
		"min":         func(p *Params) { p.MinStores = -1 },
		"p95":         func(p *Params) { p.P95Budget = 0 },
		"writes":      func(p *Params) { p.WritesPerRequest = -1 },
	} {
		p := DefaultParams()
		mut(&p)
		if _, err := Make(good, p); err == nil || !strings.Contains(err.Error(), "capacity parameters") {
			t.Errorf("%s: err %v", name, err)
		}
	}
	for name, o := range map[string]Observed{
		"empty":    {},
		"no name":  {Regions: []RegionLoad{{RPS: 1}}},
		"twice":    {Regions: []RegionLoad{{Name: "a"}, {Name: "a"}}},
		"negative": {Regions: []RegionLoad{{Name: "a", RPS: -1}}},
		"workers":  {Regions: []RegionLoad{{Name: "a", Workers: -1}}},
		"sessions": {Sessions: -1, Regions: []RegionLoad{{Name: "a"}}},
	} {
		if _, err := Make(o, DefaultParams()); err == nil || !strings.Contains(err.Error(), "observed load") {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

func TestReportsAndFileRoundTrip(t *testing.T) {
	pl, err := Make(Sample(time.Unix(0, 0)), DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	var sum bytes.Buffer
	if err := pl.WriteSummary(&sum); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"us-east-1", "Survives the loss of the largest region: us-east-1", "Recommendations:", "QUARTER"} {
		if !strings.Contains(sum.String(), w) {
			t.Errorf("summary lacks %q:\n%s", w, sum.String())
		}
	}
	var svg bytes.Buffer
	if err := pl.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&svg)
	rects := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	if want := 2*(1+len(pl.Quarters)) + 2; rects != want {
		t.Errorf("svg has %d rects, want %d bars + legend", rects, want)
	}

	// The observed part of a report is a valid --metrics file.
	dir := t.TempDir()
	var js bytes.Buffer
	if err := pl.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Observed json.RawMessage `json:"observed"`
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "load.json")
	if err := os.WriteFile(path, back.Observed, 0o600); err != nil {
		t.Fatal(err)
	}
	obs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Make(obs, DefaultParams())
	if err != nil || again.WorkersNeeded != pl.WorkersNeeded || again.StoresNeeded != pl.StoresNeeded {
		t.Fatalf("replanned from the file: %v %d/%d vs %d/%d", err, again.WorkersNeeded, again.StoresNeeded, pl.WorkersNeeded, pl.StoresNeeded)
	}

	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"regions":[{"name":"a","rsp":3}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(bad); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("misspelt field accepted: %v", err)
	}
	if _, err := ReadFile(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("missing file accepted")
	}
}
