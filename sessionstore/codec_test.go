package sessionstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// codecCommands cover every field, and the nil/empty distinctions JSON
// made, which the binary form must keep.
func codecCommands() []command {
	return []command{
		{Op: opCreate, Shard: 7, ID: "s-1", Data: []byte("payload"), IdleTTLMs: 30000, RequestID: "r-1", NowMs: 1700000000123,
			Limits: limits{EventRetention: 100, MaxStreams: 8, MaxStateKeys: 64, MaxTasks: 16}},
		{Op: opCreate, ID: "empty-data", Data: []byte{}},
		{Op: opCreate, ID: "nil-data"},
		{Op: opCompareAndSet, Shard: 63, ID: "s-2", Data: []byte{0, 1, 2}, ExpectedVersion: 1<<63 + 5, HasExpected: true, IdleTTLMs: -1, NowMs: -7},
		{Op: opAppendEvents, ID: "s-3", Stream: "st", Events: [][]byte{[]byte("a"), {}, nil, []byte("ccc")}},
		{Op: opAppendEvents, ID: "s-4", Stream: "st", Events: [][]byte{}},
		{Op: opPutState, ID: "s-5", Key: "k\x00ey", Data: []byte("v"), HasExpected: true, ExpectedVersion: 3},
		{Op: opPutTask, ID: "s-6", Task: &pb.Task{TaskId: "t-1", Status: "working", Data: []byte("d")}},
		{Op: opSweep, Shard: 2, IDs: []string{"a", "", "c"}, NowMs: 99},
		{Op: opSweep, Shard: 2, IDs: []string{}},
		{Op: opImport, Shard: 4, RestoreID: "rest-1", Seq: 12, Records: []backupRecord{{B: "sessions", K: []byte("k"), V: []byte("v")}, {B: "x", K: []byte{}, V: nil}}},
		{Op: opDelete, ID: "ünïcode-id", RequestID: "r-é"},
	}
}

// legacyEncode is the JSON format older nodes proposed.
func legacyEncode(t *testing.T, cmd command) []byte {
	t.Helper()
	w := wireCommand{command: cmd}
	if cmd.Task != nil {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd.Task)
		if err != nil {
			t.Fatal(err)
		}
		w.TaskPB = b
	}
	b, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{commandFormatJSON}, b...)
}

// TestCommandCodecMatchesJSON: a command decodes to the same value from
// the binary form as from the JSON form, so a log holding both applies
// each entry as the node that proposed it meant.
func TestCommandCodecMatchesJSON(t *testing.T) {
	for _, cmd := range codecCommands() {
		bin, err := encodeCommandBinary(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if bin[0] != commandFormatBinary {
			t.Fatalf("%s: binary format byte %d, want %d", cmd.ID, bin[0], commandFormatBinary)
		}
		// What is proposed stays JSON while older nodes may be in the
		// cluster (see commandFormatJSON).
		if prop, err := encodeCommand(cmd); err != nil || prop[0] != commandFormatJSON || string(prop) != string(legacyEncode(t, cmd)) {
			t.Fatalf("%s: proposed %q (%v), want the JSON form older nodes read", cmd.ID, prop, err)
		}
		got, err := decodeCommand(bin)
		if err != nil {
			t.Fatalf("%s: decode binary: %v", cmd.ID, err)
		}
		want, err := decodeCommand(legacyEncode(t, cmd))
		if err != nil {
			t.Fatalf("%s: decode JSON: %v", cmd.ID, err)
		}
		if !proto.Equal(got.Task, want.Task) {
			t.Fatalf("%s: task %v, JSON gives %v", cmd.ID, got.Task, want.Task)
		}
		got.Task, want.Task = nil, nil
		// Each says which format it came in (it picks the dedup layout).
		if got.format != commandFormatBinary || want.format != commandFormatJSON {
			t.Fatalf("%s: decoded formats %d and %d, want %d and %d", cmd.ID, got.format, want.format, commandFormatBinary, commandFormatJSON)
		}
		got.format, want.format = 0, 0
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: binary decodes to\n%#v\nJSON to\n%#v", cmd.ID, got, want)
		}
		// The fingerprint (retries' identity) is format-independent.
		if string(fingerprint(got)) != string(fingerprint(want)) {
			t.Fatalf("%s: fingerprints differ", cmd.ID)
		}
	}
}

// TestCommandCodecRejectsDamage: every truncation, trailing bytes and an
// unknown format byte are refused as malformed, never read as another
// command.
func TestCommandCodecRejectsDamage(t *testing.T) {
	for _, cmd := range codecCommands() {
		b, err := encodeCommandBinary(cmd)
		if err != nil {
			t.Fatal(err)
		}
		for n := 1; n < len(b); n++ {
			if _, err := decodeCommand(b[:n]); !errors.Is(err, errBadCommand) {
				t.Fatalf("%s: %d of %d bytes: err %v, want errBadCommand", cmd.ID, n, len(b), err)
			}
		}
		if _, err := decodeCommand(append(b[:len(b):len(b)], 0)); !errors.Is(err, errBadCommand) {
			t.Fatalf("%s: trailing byte: err %v, want errBadCommand", cmd.ID, err)
		}
	}
	if _, err := decodeCommand([]byte{9, 1, 2}); !errors.Is(err, errBadCommand) {
		t.Fatalf("unknown format: err %v", err)
	}
	// A huge list count in a short input fails without allocating it.
	bad := []byte{commandFormatBinary, byte(opSweep), 0}
	e := encoder{b: bad}
	for range 9 { // Shard .. Limits, ExpectedVersion, Seq
		e.uvarint(0)
	}
	for range 5 { // strings
		e.str("")
	}
	e.bytes(nil)
	e.bytes(nil)
	e.list(true, 0)
	e.uvarint(1 << 40) // IDs
	if _, err := decodeCommand(e.b); !errors.Is(err, errBadCommand) {
		t.Fatalf("oversized list: err %v", err)
	}
}

func TestOutcomeCodec(t *testing.T) {
	outs := []outcome{
		{},
		{Session: &pb.Session{Id: "s", Version: 3, Data: []byte("d")}},
		{Seqs: []uint64{1, 2, 1 << 60}},
		{Entry: &pb.StateEntry{Key: "k", Version: 2}},
		{Task: &pb.Task{TaskId: "t", Status: "completed"}},
		{Status: status.New(codes.FailedPrecondition, "version conflict")},
		{expired: true, Swept: []string{"a", "b"}},
	}
	for i, o := range outs {
		b, err := encodeOutcome(o)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeOutcome(b)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if !proto.Equal(got.Session, o.Session) || !proto.Equal(got.Entry, o.Entry) || !proto.Equal(got.Task, o.Task) ||
			!reflect.DeepEqual(got.Seqs, o.Seqs) || got.expired != o.expired || !reflect.DeepEqual(got.Swept, o.Swept) ||
			(got.Status == nil) != (o.Status == nil) || (o.Status != nil && !proto.Equal(got.Status.Proto(), o.Status.Proto())) {
			t.Fatalf("%d: %+v round-trips to %+v", i, o, got)
		}
		if _, err := decodeOutcome(append(b, 0)); err == nil {
			t.Fatalf("%d: trailing byte accepted", i)
		}
	}
}

// BenchmarkCommandCodec: what one write's command costs to encode (on the
// leader) and decode (on each of the replicas), JSON against binary.
func BenchmarkCommandCodec(b *testing.B) {
	cmd := command{Op: opCreate, Shard: 7, ID: "c-12-3-4567", Data: bytes.Repeat([]byte("x"), 256), IdleTTLMs: 30000,
		RequestID: "0123456789abcdef", NowMs: 1700000000123, Limits: limits{EventRetention: 100, MaxStreams: 8, MaxStateKeys: 64, MaxTasks: 16}}
	for _, f := range []struct {
		name   string
		encode func() ([]byte, error)
	}{
		{"json", func() ([]byte, error) {
			j, err := json.Marshal(wireCommand{command: cmd})
			return append([]byte{commandFormatJSON}, j...), err
		}},
		{"binary", func() ([]byte, error) { return encodeCommandBinary(cmd) }},
	} {
		b.Run(f.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				enc, err := f.encode()
				if err != nil {
					b.Fatal(err)
				}
				for range 3 {
					if _, err := decodeCommand(enc); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
