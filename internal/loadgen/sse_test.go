package loadgen

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func readAll(t *testing.T, s string) ([]Event, *SSEReader, error) {
	t.Helper()
	r := NewSSEReader(strings.NewReader(s))
	var evs []Event
	for {
		ev, err := r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return evs, r, err
		}
		evs = append(evs, ev)
	}
}

func TestSSEParse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     string
		want   []Event
		lastID string
	}{
		{"one event", "data: {\"a\":1}\n\n", []Event{{Data: `{"a":1}`}}, ""},
		{"multi-line data joined by newline, one space dropped", "data: {\ndata:  \"a\": 1\ndata:}\n\n",
			[]Event{{Data: "{\n \"a\": 1\n}"}}, ""},
		{"field name with leading space is unknown", " data: x\ndata: y\n\n", []Event{{Data: "y"}}, ""},
		{"no space after colon", "data:x\n\n", []Event{{Data: "x"}}, ""},
		{"CRLF and CR line ends", "id: 7\r\ndata: a\r\rdata: b\r\n\r\n", []Event{{ID: "7", HasID: true, Data: "a"}, {Data: "b"}}, "7"},
		{"comments and unknown fields ignored", ": hi\nfoo: bar\ndata: x\n\n", []Event{{Data: "x"}}, ""},
		{"priming event with id and empty data", "id: s1-0\nretry: 1500\ndata:\n\n",
			[]Event{{ID: "s1-0", HasID: true, Retry: 1500 * time.Millisecond, HasRetry: true}}, "s1-0"},
		{"event type", "event: message\ndata: x\n\n", []Event{{Type: "message", Data: "x"}}, ""},
		{"blank lines alone dispatch nothing", "\n\n\n: c\n\ndata: x\n\n", []Event{{Data: "x"}}, ""},
		{"event cut off by EOF is dropped", "data: a\n\ndata: b\n", []Event{{Data: "a"}}, ""},
		{"unterminated line dropped", "data: a\n\ndata: b", []Event{{Data: "a"}}, ""},
		{"two events ids tracked", "id: 1\ndata: a\n\nid: 2\ndata: b\n\n",
			[]Event{{ID: "1", HasID: true, Data: "a"}, {ID: "2", HasID: true, Data: "b"}}, "2"},
		{"bad retry ignored", "retry: soon\ndata: a\n\n", []Event{{Data: "a"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, r, err := readAll(t, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("events %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("event %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
			if r.LastEventID != tc.lastID {
				t.Errorf("LastEventID %q, want %q", r.LastEventID, tc.lastID)
			}
		})
	}
}

func TestSSETooLarge(t *testing.T) {
	for name, in := range map[string]string{
		"one long line":   "data: " + strings.Repeat("x", 100_000) + "\n\n",
		"many data lines": strings.Repeat("data: "+strings.Repeat("x", 1000)+"\n", 100) + "\n",
	} {
		r := NewSSEReader(strings.NewReader(in))
		r.max = 64 << 10
		if _, err := r.Next(); !errors.Is(err, ErrEventTooLarge) {
			t.Errorf("%s: err = %v, want ErrEventTooLarge", name, err)
		}
	}
	// the real limit lets a 1 MiB event through
	r := NewSSEReader(strings.NewReader("data: " + strings.Repeat("x", 1<<20) + "\n\n"))
	if ev, err := r.Next(); err != nil || len(ev.Data) != 1<<20 {
		t.Fatalf("1 MiB event: %v", err)
	}
}

func TestReadStreamFindsAnswer(t *testing.T) {
	stream := "id: p\ndata:\n\n" +
		"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"t\",\"progress\":1}}\n\n" +
		"data: {\"jsonrpc\":\"2.0\",\"id\":99,\"method\":\"ping\"}\n\n" + // a server request, not our answer
		"id: e2\ndata: {\"jsonrpc\":\"2.0\",\n" +
		"data:  \"id\":7,\"result\":{\"ok\":true}}\n\n"
	var res CallResult
	found, dropped, m, sr, err := readStream(strings.NewReader(stream), "7", &res, false)
	if err != nil || !found || dropped {
		t.Fatalf("found %v dropped %v err %v", found, dropped, err)
	}
	if string(m.Result) != `{"ok":true}` || res.Progress != 1 || sr.LastEventID != "e2" {
		t.Fatalf("result %s progress %d last id %q", m.Result, res.Progress, sr.LastEventID)
	}

	// with drop, it stops at the first event with an id
	res = CallResult{}
	found, dropped, _, sr, err = readStream(strings.NewReader(stream), "7", &res, true)
	if err != nil || found || !dropped || sr.LastEventID != "p" {
		t.Fatalf("drop: found %v dropped %v last %q err %v", found, dropped, sr.LastEventID, err)
	}

	// a stream that ends without the answer
	found, _, _, _, err = readStream(strings.NewReader("data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"), "7", &res, false)
	if found || !errors.Is(err, io.EOF) {
		t.Fatalf("other id: found %v err %v", found, err)
	}

	// garbage is a decode failure
	_, _, _, _, err = readStream(strings.NewReader("data: not json\n\n"), "7", &res, false)
	if KindOf(err) != "decode" {
		t.Fatalf("garbage: %v", err)
	}
}
