package sessionstore

import (
	"encoding/json"
	"errors"
	"fmt"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Raft log encoding of a command: one format byte, then wireCommand: in
// JSON (commandFormatJSON, what older nodes proposed; still decoded, as
// logs and snapshots may hold it) or in the binary form of codec.go
// (commandFormatBinary and commandFormatColocated). Each keeps every field
// the apply needs, including the proposer's time and limits, so a replica
// applies exactly what the leader decided whatever its own clock and
// flags; the task travels as deterministic protobuf bytes inside it.
// Decoding is the same on every replica, which is all determinism needs
// (the bytes are the log entry).
//
// The format byte also says how the entry is applied:
// commandFormatColocated is the binary form applied with the colocated
// retry-dedup layout (dedup.go); formats 1 and 2 record requests in the
// shard-wide trees, as the builds before format 3 do (they look a request
// up beside its session first too, which finds nothing until format-3
// entries were applied). So the format of an entry, not the build applying
// it, decides what every replica stores.
//
// Upgrades: a replica that cannot decode an entry its peers apply would
// diverge from them. Builds before format 3 do not stop on an unknown
// format: their stateMachine.Apply answers such an entry with an Internal
// refusal and goes on, so their replica would skip the write. So a format
// is proposed only once every store of the cluster advertises that it
// applies it (format.go: each store registers the newest format it
// applies); until then every node keeps proposing JSON, which every build
// reads. From this build on, an unknown (newer) format stops the replica
// instead (errUnknownFormat; a newer peer's entry is not malformed input).
const (
	commandFormatJSON      = 1
	commandFormatBinary    = 2
	commandFormatColocated = 3
	// maxCommandFormat is the newest format this build decodes.
	maxCommandFormat = commandFormatColocated
)

type wireCommand struct {
	command
	// TaskPB is command.Task in protobuf.
	TaskPB []byte `json:"TaskPB,omitempty"`
}

func toWire(cmd command) (wireCommand, error) {
	w := wireCommand{command: cmd}
	if cmd.Task != nil {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd.Task)
		if err != nil {
			return w, err
		}
		w.TaskPB = b
	}
	return w, nil
}

// encodeCommand is the form proposed today: JSON, which every released
// node reads (see commandFormatJSON).
func encodeCommand(cmd command) ([]byte, error) {
	w, err := toWire(cmd)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, err
	}
	return append([]byte{commandFormatJSON}, b...), nil
}

// encodeCommandBinary is the binary form in format 2 (see
// commandFormatBinary).
func encodeCommandBinary(cmd command) ([]byte, error) {
	return encodeCommandAt(cmd, commandFormatBinary)
}

// encodeCommandAt encodes cmd in the given format (1 to maxCommandFormat).
func encodeCommandAt(cmd command, format byte) ([]byte, error) {
	switch format {
	case commandFormatJSON:
		return encodeCommand(cmd)
	case commandFormatBinary, commandFormatColocated:
		w, err := toWire(cmd)
		if err != nil {
			return nil, err
		}
		return appendCommandBinary(append(make([]byte, 0, 64+len(cmd.Data)), format), &w), nil
	}
	return nil, fmt.Errorf("encode command: unknown format %d (this build writes 1 to %d)", format, maxCommandFormat)
}

var errBadCommand = errors.New("malformed command")

// errUnknownFormat: an entry in a format newer than maxCommandFormat (a
// newer build proposed it); decodeCommand wraps it with errBadCommand.
var errUnknownFormat = errors.New("unknown command format")

func decodeCommand(b []byte) (command, error) {
	if len(b) < 1 {
		return command{}, fmt.Errorf("%w: empty", errBadCommand)
	}
	var w wireCommand
	switch b[0] {
	case commandFormatJSON:
		if err := json.Unmarshal(b[1:], &w); err != nil {
			return command{}, fmt.Errorf("%w: %v", errBadCommand, err)
		}
	case commandFormatBinary, commandFormatColocated:
		var err error
		if w, err = decodeCommandBinary(b[1:]); err != nil {
			return command{}, fmt.Errorf("%w: %v", errBadCommand, err)
		}
	default:
		return command{}, fmt.Errorf("%w: %w %d (this build reads 1 to %d)", errBadCommand, errUnknownFormat, b[0], maxCommandFormat)
	}
	cmd := w.command
	cmd.format = b[0]
	if w.TaskPB != nil {
		cmd.Task = &pb.Task{}
		if err := proto.Unmarshal(w.TaskPB, cmd.Task); err != nil {
			return command{}, fmt.Errorf("%w: task: %v", errBadCommand, err)
		}
	}
	return cmd, nil
}

// wireOutcome is an outcome as returned from the state machine to the
// proposer, in the binary form of codec.go (it only travels inside the
// proposing node, so its format needs no version).
type wireOutcome struct {
	Session []byte   `json:"session,omitempty"`
	Seqs    []uint64 `json:"seqs,omitempty"`
	Entry   []byte   `json:"entry,omitempty"`
	Task    []byte   `json:"task,omitempty"`
	Status  []byte   `json:"status,omitempty"`
	Expired bool     `json:"expired,omitempty"`
	Swept   []string `json:"swept,omitempty"`
}

func encodeOutcome(o outcome) ([]byte, error) {
	var w wireOutcome
	var err error
	marshal := func(m proto.Message) []byte {
		if err != nil {
			return nil
		}
		var b []byte
		b, err = proto.Marshal(m)
		return b
	}
	if o.Session != nil {
		w.Session = marshal(o.Session)
	}
	if o.Entry != nil {
		w.Entry = marshal(o.Entry)
	}
	if o.Task != nil {
		w.Task = marshal(o.Task)
	}
	if o.Status != nil {
		w.Status = marshal(o.Status.Proto())
	}
	if err != nil {
		return nil, err
	}
	w.Seqs, w.Expired, w.Swept = o.Seqs, o.expired, o.Swept
	return appendOutcomeBinary(nil, &w), nil
}

func decodeOutcome(b []byte) (outcome, error) {
	w, err := decodeOutcomeBinary(b)
	if err != nil {
		return outcome{}, err
	}
	o := outcome{Seqs: w.Seqs, expired: w.Expired, Swept: w.Swept}
	if w.Session != nil {
		o.Session = &pb.Session{}
		if err := proto.Unmarshal(w.Session, o.Session); err != nil {
			return outcome{}, err
		}
	}
	if w.Entry != nil {
		o.Entry = &pb.StateEntry{}
		if err := proto.Unmarshal(w.Entry, o.Entry); err != nil {
			return outcome{}, err
		}
	}
	if w.Task != nil {
		o.Task = &pb.Task{}
		if err := proto.Unmarshal(w.Task, o.Task); err != nil {
			return outcome{}, err
		}
	}
	if w.Status != nil {
		sp := &spb.Status{}
		if err := proto.Unmarshal(w.Status, sp); err != nil {
			return outcome{}, err
		}
		o.Status = status.FromProto(sp)
	}
	return o, nil
}
