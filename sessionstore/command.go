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
// (commandFormatBinary, what is proposed now). Either keeps every field
// the apply needs, including the proposer's time and limits, so a replica
// applies exactly what the leader decided whatever its own clock and
// flags; the task travels as deterministic protobuf bytes inside it.
// Decoding is the same on every replica, which is all determinism needs
// (the bytes are the log entry).
//
// Upgrades: a replica that cannot decode an entry its peers apply would
// diverge from them, so a new format is introduced in two releases. This
// one reads both and still proposes JSON (encodeCommand), so a cluster may
// mix it with older nodes during a rolling upgrade; once every node runs a
// build that reads the binary form, a later release proposes it
// (encodeCommandBinary), saving the JSON decode on every replica.
const (
	commandFormatJSON   = 1
	commandFormatBinary = 2
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

// encodeCommandBinary is the binary form, decoded since this release and
// proposed once no node older than it remains (see commandFormatBinary).
func encodeCommandBinary(cmd command) ([]byte, error) {
	w, err := toWire(cmd)
	if err != nil {
		return nil, err
	}
	return appendCommandBinary(append(make([]byte, 0, 64+len(cmd.Data)), commandFormatBinary), &w), nil
}

var errBadCommand = errors.New("malformed command")

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
	case commandFormatBinary:
		var err error
		if w, err = decodeCommandBinary(b[1:]); err != nil {
			return command{}, fmt.Errorf("%w: %v", errBadCommand, err)
		}
	default:
		return command{}, fmt.Errorf("%w: unknown format %d", errBadCommand, b[0])
	}
	cmd := w.command
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
