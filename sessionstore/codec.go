package sessionstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// A binary encoding of commands (commandFormatBinary) and outcomes. JSON
// was the largest share of the state machine's own CPU per write after
// bbolt: every replica decoded every command with reflection, and every
// replica encoded every outcome. The binary form is a fixed sequence of
// fields; it keeps JSON's distinctions that the apply can see (a nil
// against an empty byte slice or list, a task present only with bytes),
// so a command means the same whichever format it was proposed in.
//
// Layout after the format byte: op u8 | flags u8 (bit 0 HasExpected) |
// varints Shard, IdleTTLMs, NowMs, limits (4) | uvarints ExpectedVersion,
// Seq | strings ID, Stream, Key, RequestID, RestoreID | bytes Data, TaskPB |
// lists Events (bytes), IDs (strings), Records (string, bytes, bytes).
// A string is uvarint length | bytes; bytes and lists are uvarint (length
// + 1) | items, 0 meaning nil.

// encoder appends fields to a buffer.
type encoder struct{ b []byte }

func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) bytes(b []byte) {
	if b == nil {
		e.uvarint(0)
		return
	}
	e.uvarint(uint64(len(b)) + 1)
	e.b = append(e.b, b...)
}

// list writes the nil-ness and length of a list of n items.
func (e *encoder) list(isNil bool, n int) {
	if isNil {
		e.uvarint(0)
		return
	}
	e.uvarint(uint64(n) + 1)
}

// decoder reads fields; the first error sticks and later reads return
// zero values.
type decoder struct {
	b   []byte
	err error
}

var errShort = errors.New("truncated")

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) byte1() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail(errShort)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// int reads a varint that must fit an int.
func (d *decoder) int() int {
	v := d.varint()
	if v < math.MinInt || v > math.MaxInt {
		d.fail(fmt.Errorf("integer %d out of range", v))
		return 0
	}
	return int(v)
}

func (d *decoder) take(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errShort)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.take(d.uvarint())) }

// bytes returns a copy: the result outlives the log entry's buffer.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n == 0 || d.err != nil {
		return nil
	}
	v := d.take(n - 1)
	if d.err != nil {
		return nil
	}
	return append(make([]byte, 0, len(v)), v...)
}

// list returns a list's length and whether it is nil. The length is
// bounded by the bytes left (every item takes at least one), so a corrupt
// count cannot make the caller allocate without bound.
func (d *decoder) list() (int, bool) {
	n := d.uvarint()
	if n == 0 || d.err != nil {
		return 0, true
	}
	if n-1 > uint64(len(d.b)) {
		d.fail(fmt.Errorf("list of %d items in %d bytes", n-1, len(d.b)))
		return 0, true
	}
	return int(n - 1), false
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) > 0 {
		d.fail(fmt.Errorf("%d bytes after the last field", len(d.b)))
	}
	return d.err
}

const flagHasExpected = 1 << 0

func appendCommandBinary(b []byte, w *wireCommand) []byte {
	e := encoder{b: b}
	e.b = append(e.b, byte(w.Op))
	var flags byte
	if w.HasExpected {
		flags |= flagHasExpected
	}
	e.b = append(e.b, flags)
	e.varint(int64(w.Shard))
	e.varint(w.IdleTTLMs)
	e.varint(w.NowMs)
	e.varint(int64(w.Limits.EventRetention))
	e.varint(int64(w.Limits.MaxStreams))
	e.varint(int64(w.Limits.MaxStateKeys))
	e.varint(int64(w.Limits.MaxTasks))
	e.uvarint(w.ExpectedVersion)
	e.uvarint(w.Seq)
	e.str(w.ID)
	e.str(w.Stream)
	e.str(w.Key)
	e.str(w.RequestID)
	e.str(w.RestoreID)
	e.bytes(w.Data)
	// JSON's omitempty: an empty task encoding travels as none.
	if len(w.TaskPB) == 0 {
		e.bytes(nil)
	} else {
		e.bytes(w.TaskPB)
	}
	e.list(w.Events == nil, len(w.Events))
	for _, ev := range w.Events {
		e.bytes(ev)
	}
	e.list(w.IDs == nil, len(w.IDs))
	for _, id := range w.IDs {
		e.str(id)
	}
	// JSON's omitempty: no records travel as nil.
	e.list(len(w.Records) == 0, len(w.Records))
	for _, r := range w.Records {
		e.str(r.B)
		e.bytes(r.K)
		e.bytes(r.V)
	}
	return e.b
}

func decodeCommandBinary(b []byte) (wireCommand, error) {
	d := decoder{b: b}
	var w wireCommand
	w.Op = op(d.byte1())
	flags := d.byte1()
	if flags&^flagHasExpected != 0 {
		d.fail(fmt.Errorf("unknown flags %#x", flags))
	}
	w.HasExpected = flags&flagHasExpected != 0
	w.Shard = d.int()
	w.IdleTTLMs = d.varint()
	w.NowMs = d.varint()
	w.Limits.EventRetention = d.int()
	w.Limits.MaxStreams = d.int()
	w.Limits.MaxStateKeys = d.int()
	w.Limits.MaxTasks = d.int()
	w.ExpectedVersion = d.uvarint()
	w.Seq = d.uvarint()
	w.ID = d.str()
	w.Stream = d.str()
	w.Key = d.str()
	w.RequestID = d.str()
	w.RestoreID = d.str()
	w.Data = d.bytes()
	w.TaskPB = d.bytes()
	if n, isNil := d.list(); !isNil {
		w.Events = make([][]byte, n)
		for i := range w.Events {
			w.Events[i] = d.bytes()
		}
	}
	if n, isNil := d.list(); !isNil {
		w.IDs = make([]string, n)
		for i := range w.IDs {
			w.IDs[i] = d.str()
		}
	}
	if n, isNil := d.list(); !isNil {
		w.Records = make([]backupRecord, n)
		for i := range w.Records {
			w.Records[i] = backupRecord{B: d.str(), K: d.bytes(), V: d.bytes()}
		}
	}
	return w, d.end()
}

// Outcome layout: flags u8 (bit 0 expired) | bytes Session, Entry, Task,
// Status | lists Seqs (uvarints), Swept (strings). As with JSON's
// omitempty, empty fields decode as nil.
const flagExpired = 1 << 0

func appendOutcomeBinary(b []byte, w *wireOutcome) []byte {
	e := encoder{b: b}
	var flags byte
	if w.Expired {
		flags |= flagExpired
	}
	e.b = append(e.b, flags)
	for _, f := range [][]byte{w.Session, w.Entry, w.Task, w.Status} {
		if len(f) == 0 {
			f = nil
		}
		e.bytes(f)
	}
	e.list(len(w.Seqs) == 0, len(w.Seqs))
	for _, s := range w.Seqs {
		e.uvarint(s)
	}
	e.list(len(w.Swept) == 0, len(w.Swept))
	for _, s := range w.Swept {
		e.str(s)
	}
	return e.b
}

func decodeOutcomeBinary(b []byte) (wireOutcome, error) {
	d := decoder{b: b}
	var w wireOutcome
	flags := d.byte1()
	if flags&^flagExpired != 0 {
		d.fail(fmt.Errorf("unknown flags %#x", flags))
	}
	w.Expired = flags&flagExpired != 0
	w.Session, w.Entry, w.Task, w.Status = d.bytes(), d.bytes(), d.bytes(), d.bytes()
	if n, isNil := d.list(); !isNil {
		w.Seqs = make([]uint64, n)
		for i := range w.Seqs {
			w.Seqs[i] = d.uvarint()
		}
	}
	if n, isNil := d.list(); !isNil {
		w.Swept = make([]string, n)
		for i := range w.Swept {
			w.Swept[i] = d.str()
		}
	}
	return w, d.end()
}
