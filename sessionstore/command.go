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

// Raft log encoding of a command: one format byte (commandFormat) then the
// JSON of wireCommand. JSON keeps every field the apply needs, including
// the proposer's time and limits, so a replica applies exactly what the
// leader decided whatever its own clock and flags; the task travels as
// deterministic protobuf bytes inside it. Decoding is the same on every
// replica, which is all determinism needs (the bytes are the log entry).
const commandFormat = 1

type wireCommand struct {
	command
	// TaskPB is command.Task in protobuf.
	TaskPB []byte `json:"TaskPB,omitempty"`
}

func encodeCommand(cmd command) ([]byte, error) {
	w := wireCommand{command: cmd}
	if cmd.Task != nil {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd.Task)
		if err != nil {
			return nil, err
		}
		w.TaskPB = b
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, err
	}
	return append([]byte{commandFormat}, b...), nil
}

var errBadCommand = errors.New("malformed command")

func decodeCommand(b []byte) (command, error) {
	if len(b) < 1 || b[0] != commandFormat {
		return command{}, fmt.Errorf("%w: unknown format", errBadCommand)
	}
	var w wireCommand
	if err := json.Unmarshal(b[1:], &w); err != nil {
		return command{}, fmt.Errorf("%w: %v", errBadCommand, err)
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
// proposer (it only travels inside the proposing node).
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
	return json.Marshal(w)
}

func decodeOutcome(b []byte) (outcome, error) {
	var w wireOutcome
	if err := json.Unmarshal(b, &w); err != nil {
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
