package capacity

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the plan as indented JSON.
func (pl Plan) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(pl)
}

// WriteSummary writes the plan for a person: the regions now and needed,
// the quarters ahead and what to do.
func (pl Plan) WriteSummary(w io.Writer) error {
	var b strings.Builder
	p := pl.Params
	fmt.Fprintf(&b, "Capacity plan from %s: %.0f req/s, %d sessions, %.0f store writes/s\n", pl.Observed.Source, pl.TotalRPS, pl.Observed.Sessions, pl.StoreWrites)
	fmt.Fprintf(&b, "Per node: worker %.0f req/s, store %.0f writes/s, %d B per session per replica; target utilisation %.0f %%, RF %d\n",
		p.WorkerRPS, p.StoreWritesPerSec, p.SessionBytes, p.TargetUtilization*100, p.ReplicationFactor)
	fmt.Fprintf(&b, "Survives the loss of the largest region: %s\n\n", pl.LargestRegion)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tREQ/S\tREQ/S IF LARGEST LOST\tWORKERS\tNEEDED\tUTIL\tSTORES\tNEEDED")
	for _, r := range pl.Regions {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%d\t%d\t%.0f%%\t%d\t%d\n", r.Name, r.RPS, r.RPSAfterLoss, r.Workers, r.WorkersNeeded, r.WorkerUtilization*100, r.Stores, r.StoresNeeded)
	}
	fmt.Fprintf(tw, "total\t%.0f\t\t\t%d\t\t\t%d\n", pl.TotalRPS, pl.WorkersNeeded, pl.StoresNeeded)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(pl.Quarters) > 0 {
		fmt.Fprintf(&b, "\nGrowth %.0f %% per quarter:\n", p.GrowthPerQuarter*100)
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "QUARTER\tREQ/S\tSESSIONS\tWORKERS\tSTORES")
		for _, q := range pl.Quarters {
			fmt.Fprintf(tw, "+%d\t%.0f\t%d\t%d\t%d\n", q.Quarter, q.RPS, q.Sessions, q.WorkersNeeded, q.StoresNeeded)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	b.WriteString("\nRecommendations:\n")
	if len(pl.Recommendations) == 0 {
		b.WriteString("  none: every region has what it needs\n")
	}
	for _, r := range pl.Recommendations {
		fmt.Fprintf(&b, "  - %s\n    because %s\n", r.Action, r.Reason)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteSVG draws workers and store nodes needed now and per quarter as a
// grouped bar chart, a picture an operator can paste into a review.
func (pl Plan) WriteSVG(w io.Writer) error {
	type bar struct {
		label           string
		workers, stores int
	}
	bars := []bar{{"now", pl.WorkersNeeded, pl.StoresNeeded}}
	for _, q := range pl.Quarters {
		bars = append(bars, bar{fmt.Sprintf("+%dQ", q.Quarter), q.WorkersNeeded, q.StoresNeeded})
	}
	top := 1
	for _, b := range bars {
		top = max(top, b.workers, b.stores)
	}
	const (
		width, height       = 640, 320
		left, right, bottom = 50, 20, 40
		topMargin           = 40
	)
	plotH := float64(height - bottom - topMargin)
	group := float64(width-left-right) / float64(len(bars))
	barW := group * 0.35
	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&s, `<text x="%d" y="20" font-size="14">%s</text>`+"\n", left, html.EscapeString("Nodes needed (survives loss of "+pl.LargestRegion+")"))
	fmt.Fprintf(&s, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", left, height-bottom, width-right, height-bottom)
	fmt.Fprintf(&s, `<text x="5" y="%d">%d</text>`+"\n", topMargin+4, top)
	for i, b := range bars {
		x := float64(left) + group*float64(i) + group*0.15
		for j, v := range []int{b.workers, b.stores} {
			h := plotH * float64(v) / float64(top)
			color := "#3b7dd8"
			if j == 1 {
				color = "#e08a2c"
			}
			fmt.Fprintf(&s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%d</title></rect>`+"\n",
				x+float64(j)*barW, float64(height-bottom)-h, barW, h, color, v)
		}
		fmt.Fprintf(&s, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x+barW, height-bottom+16, html.EscapeString(b.label))
	}
	fmt.Fprintf(&s, `<rect x="%d" y="28" width="10" height="10" fill="#3b7dd8"/><text x="%d" y="37">workers</text>`+"\n", width-180, width-165)
	fmt.Fprintf(&s, `<rect x="%d" y="28" width="10" height="10" fill="#e08a2c"/><text x="%d" y="37">store nodes</text>`+"\n", width-100, width-85)
	s.WriteString("</svg>\n")
	_, err := io.WriteString(w, s.String())
	return err
}
