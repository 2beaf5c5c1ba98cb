// Command benchchart draws scripts/bench.sh's results as one SVG: throughput
// and p99 latency of every target for every mix and concurrency, and, when
// the stored-sessions run happened, throughput and p99 against the number of
// sessions in the store. It reads the tab-separated rows bench.sh writes:
//
//	rows.tsv:     target mix C rps p50 p99 errors rc
//	sessions.tsv: stored mix C rps p50 p99 errors rc store-rss-MiB
//
// Exit status 1 when a file cannot be read or neither has rows, 2 on bad
// flags.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
)

type row struct {
	label, mix, c string
	rps, p99      float64
}

func readRows(path string, minFields int) ([]row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows []row
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		fs := strings.Split(sc.Text(), "\t")
		if len(fs) < minFields {
			return nil, fmt.Errorf("%s:%d: %d fields, want at least %d", path, line, len(fs), minFields)
		}
		rps, err1 := strconv.ParseFloat(fs[3], 64)
		p99, err2 := strconv.ParseFloat(fs[5], 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%s:%d: rps %q or p99 %q is not a number", path, line, fs[3], fs[5])
		}
		rows = append(rows, row{label: fs[0], mix: fs[1], c: fs[2], rps: rps, p99: p99})
	}
	return rows, sc.Err()
}

// svg accumulates elements; coordinates are in pixels from the top left.
type svg struct{ b strings.Builder }

func (s *svg) add(format string, a ...any) { fmt.Fprintf(&s.b, format+"\n", a...) }

func (s *svg) text(x, y float64, anchor, size, body string) {
	s.add(`<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%s">%s</text>`, x, y, anchor, size, body)
}

var palette = []string{"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"}

// niceMax rounds v up to 1, 2 or 5 times a power of ten, for axis ticks.
func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// axis draws a y axis with 5 ticks from 0 to max on the left of a plot area.
func (s *svg) axis(x, y, w, h, max float64, unit string) {
	for i := 0; i <= 5; i++ {
		v := max * float64(i) / 5
		ty := y + h - h*float64(i)/5
		s.add(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`, x, ty, x+w, ty)
		s.text(x-4, ty+4, "end", "10", strconv.FormatFloat(v, 'f', -1, 64))
	}
	s.text(x-40, y-8, "start", "11", unit)
}

// bars draws one value per (group, target): groups along x, targets as
// coloured bars inside a group.
func (s *svg) bars(x, y, w, h float64, title, unit string, rows []row, value func(row) float64) {
	var groups, targets []string
	seen := map[string]bool{}
	for _, r := range rows {
		g := r.mix + " C=" + r.c
		if !seen["g"+g] {
			seen["g"+g] = true
			groups = append(groups, g)
		}
		if !seen["t"+r.label] {
			seen["t"+r.label] = true
			targets = append(targets, r.label)
		}
	}
	max := 0.0
	for _, r := range rows {
		max = math.Max(max, value(r))
	}
	max = niceMax(max)
	s.text(x+w/2, y-24, "middle", "14", title)
	s.axis(x, y, w, h, max, unit)
	gw := w / float64(len(groups))
	bw := gw * 0.8 / float64(len(targets))
	for gi, g := range groups {
		gx := x + gw*float64(gi) + gw*0.1
		s.text(gx+gw*0.4, y+h+14, "middle", "10", g)
		for ti, t := range targets {
			for _, r := range rows {
				if r.label != t || r.mix+" C="+r.c != g {
					continue
				}
				bh := h * value(r) / max
				s.add(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.4g %s</title></rect>`,
					gx+bw*float64(ti), y+h-bh, bw-1, bh, palette[ti%len(palette)], t, g, value(r), unit)
			}
		}
	}
	for ti, t := range targets {
		lx := x + float64(ti)*110
		s.add(`<rect x="%.1f" y="%.1f" width="10" height="10" fill="%s"/>`, lx, y+h+24, palette[ti%len(palette)])
		s.text(lx+14, y+h+33, "start", "11", t)
	}
}

// line draws value against stored sessions on a log x axis.
func (s *svg) line(x, y, w, h float64, title, unit string, rows []row, value func(row) float64) {
	max := 0.0
	for _, r := range rows {
		max = math.Max(max, value(r))
	}
	max = niceMax(max)
	s.text(x+w/2, y-24, "middle", "14", title)
	s.axis(x, y, w, h, max, unit)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range rows {
		n, _ := strconv.ParseFloat(r.label, 64)
		lo, hi = math.Min(lo, math.Log10(n)), math.Max(hi, math.Log10(n))
	}
	if hi == lo {
		hi = lo + 1
	}
	var pts []string
	for _, r := range rows {
		n, _ := strconv.ParseFloat(r.label, 64)
		px := x + w*0.05 + w*0.9*(math.Log10(n)-lo)/(hi-lo)
		py := y + h - h*value(r)/max
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", px, py))
		s.add(`<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`, px, py, palette[0])
		s.text(px, y+h+14, "middle", "10", strconv.FormatFloat(n, 'f', -1, 64))
		s.text(px, py-6, "middle", "10", strconv.FormatFloat(value(r), 'g', 4, 64))
	}
	s.add(`<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`, strings.Join(pts, " "), palette[0])
	s.text(x+w/2, y+h+30, "middle", "11", "sessions stored")
}

func main() {
	rowsPath := flag.String("rows", "rows.tsv", "bench.sh's per-target rows")
	sessPath := flag.String("sessions", "", "bench.sh's stored-sessions rows (optional)")
	out := flag.String("out", "bench.svg", "SVG file to write")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "benchchart: --out must name a file")
		os.Exit(2)
	}
	rows, err := readRows(*rowsPath, 8)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchchart:", err)
		os.Exit(1)
	}
	var sess []row
	if *sessPath != "" {
		if _, statErr := os.Stat(*sessPath); statErr == nil {
			if sess, err = readRows(*sessPath, 8); err != nil {
				fmt.Fprintln(os.Stderr, "benchchart:", err)
				os.Exit(1)
			}
		}
	}
	if len(rows) == 0 && len(sess) == 0 {
		fmt.Fprintf(os.Stderr, "benchchart: no rows in %s or %q: nothing to draw\n", *rowsPath, *sessPath)
		os.Exit(1)
	}
	const pw, ph = 480.0, 220.0
	var s svg
	x := 80.0
	width, height := 80.0, ph+120
	if len(rows) > 0 {
		width += 2*pw + 140
	}
	if len(sess) > 0 {
		width, height = width+pw+140, 2*ph+160
	}
	s.add(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif">`, width, height)
	s.add(`<rect width="100%%" height="100%%" fill="white"/>`)
	if len(rows) > 0 {
		s.bars(x, 60, pw, ph, "Throughput (higher is better)", "req/s", rows, func(r row) float64 { return r.rps })
		s.bars(x+pw+120, 60, pw, ph, "p99 latency (lower is better)", "ms", rows, func(r row) float64 { return r.p99 })
		x += 2*pw + 240
	}
	if len(sess) > 0 {
		note := fmt.Sprintf("one worker + store, mix %s, C=%s", sess[0].mix, sess[0].c)
		s.line(x, 60, pw, ph*0.7, "Throughput vs stored sessions", "req/s", sess, func(r row) float64 { return r.rps })
		s.line(x, 60+ph+60, pw, ph*0.7, "p99 vs stored sessions", "ms", sess, func(r row) float64 { return r.p99 })
		s.text(x+pw/2, 60+2*ph+50, "middle", "11", note)
	}
	s.add(`</svg>`)
	if err := os.WriteFile(*out, []byte(s.b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "benchchart:", err)
		os.Exit(1)
	}
}
