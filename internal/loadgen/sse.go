package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Event is one server-sent event.
type Event struct {
	ID    string // the event's id field; "" when it had none
	HasID bool
	Type  string // event field; "" means "message"
	Data  string // data lines joined by "\n"
	// Retry is the reconnection delay the server asked for, when HasRetry.
	Retry    time.Duration
	HasRetry bool
}

// maxEventBytes bounds one event, so a server that never ends a line cannot
// exhaust memory.
const maxEventBytes = 16 << 20

// ErrEventTooLarge is returned when an event exceeds maxEventBytes.
var ErrEventTooLarge = errors.New("server-sent event larger than 16 MiB")

// SSEReader parses a text/event-stream body (the WHATWG "event stream
// interpretation": lines end with CRLF, LF or CR; "data:" lines accumulate;
// one optional space after the colon is dropped; lines starting with ':' are
// comments; a blank line dispatches).
type SSEReader struct {
	r *bufio.Reader
	// LastEventID is the id of the last event that carried one (the value a
	// client sends as Last-Event-ID to resume).
	LastEventID string
	pendingCR   bool
	// max bounds one event's size (maxEventBytes unless a test lowers it).
	max int
}

// NewSSEReader reads events from r.
func NewSSEReader(r io.Reader) *SSEReader {
	return &SSEReader{r: bufio.NewReaderSize(r, 32<<10), max: maxEventBytes}
}

// readLine returns one line without its terminator (LF, CRLF or CR).
func (s *SSEReader) readLine() (string, error) {
	if s.pendingCR {
		// the last line ended in CR: an LF right after it belongs to it
		b, err := s.r.Peek(1)
		if err != nil {
			return "", err
		}
		if b[0] == '\n' {
			_, _ = s.r.Discard(1)
		}
		s.pendingCR = false
	}
	var line []byte
	for {
		if s.r.Buffered() == 0 {
			if _, err := s.r.Peek(1); err != nil {
				// An unterminated last line is discarded, as the spec
				// says (the event is incomplete).
				return "", err
			}
		}
		data, _ := s.r.Peek(s.r.Buffered())
		if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
			line = append(line, data[:i]...)
			s.pendingCR = data[i] == '\r'
			_, _ = s.r.Discard(i + 1)
			return string(line), nil
		}
		line = append(line, data...)
		_, _ = s.r.Discard(len(data))
		if len(line) > s.max {
			return "", ErrEventTooLarge
		}
	}
}

// Next returns the next event. Events with neither data nor id (for
// example a lone comment block) are skipped; an event with an id and no data
// (a priming event) is returned so the caller learns the id. At the end of
// the stream it returns io.EOF; an event cut off by the end is dropped.
func (s *SSEReader) Next() (Event, error) {
	var (
		ev      Event
		data    bytes.Buffer
		hasData bool
		size    int
	)
	for {
		line, err := s.readLine()
		if err != nil {
			return Event{}, err
		}
		if line == "" {
			if !hasData && !ev.HasID && !ev.HasRetry {
				ev = Event{}
				continue
			}
			if hasData {
				ev.Data = data.String()
			}
			return ev, nil
		}
		size += len(line)
		if size > s.max {
			return Event{}, ErrEventTooLarge
		}
		if line[0] == ':' {
			continue
		}
		field, value, found := strings.Cut(line, ":")
		if found {
			value = strings.TrimPrefix(value, " ")
		}
		switch field {
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "id":
			if !strings.ContainsRune(value, 0) {
				ev.ID = value
				ev.HasID = true
				s.LastEventID = value
			}
		case "event":
			ev.Type = value
		case "retry":
			if n, err := strconv.ParseUint(value, 10, 32); err == nil {
				ev.Retry = time.Duration(n) * time.Millisecond
				ev.HasRetry = true
			}
		}
	}
}

// String shows an event for error messages.
func (e Event) String() string {
	d := e.Data
	if len(d) > 200 {
		d = d[:200] + "…"
	}
	return fmt.Sprintf("event{id=%q type=%q data=%q}", e.ID, e.Type, d)
}
