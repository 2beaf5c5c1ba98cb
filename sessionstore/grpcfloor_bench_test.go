package sessionstore_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// BenchmarkGRPCFloor is the floor under every BenchmarkStore number: a
// gRPC unary echo that does no work at all, in this process on loopback,
// with BenchmarkStore's payload, client counts and metrics. The request
// carries benchPayloadSize bytes (a write's size) and the answer returns
// them (a read's size). Whatever the store does, one of its calls costs at
// least this: its p99 at 16 clients is the lowest p99 any gRPC service
// could show in the same closed loop on this machine. Run with
//
//	go test -run '^$' -bench BenchmarkGRPCFloor -benchtime 3s ./sessionstore/
//
// (make bench runs it beside BenchmarkStore through scripts/bench-store.sh).
// The server has grpc-go's defaults (no stream workers, unlike the
// store's), the client one connection, as the store client has per node;
// the process the store's GC settings.
func BenchmarkGRPCFloor(b *testing.B) {
	useStoreGC(b) // as BenchmarkStore runs
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	srv.RegisterService(&echoServiceDesc, nil)
	go func() { _ = srv.Serve(lis) }()
	b.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cc.Close() })
	payload := bytes.Repeat([]byte("x"), benchPayloadSize)
	for _, conc := range benchClients {
		b.Run(fmt.Sprintf("echo/clients=%d", conc), func(b *testing.B) {
			calls := make([]func(context.Context, int) error, conc)
			for w := range calls {
				calls[w] = func(ctx context.Context, _ int) error {
					out := new(wrapperspb.BytesValue)
					if err := cc.Invoke(ctx, echoMethod, wrapperspb.Bytes(payload), out); err != nil {
						return err
					}
					if len(out.GetValue()) != len(payload) {
						return fmt.Errorf("echo returned %d bytes, want %d", len(out.GetValue()), len(payload))
					}
					return nil
				}
			}
			runConcurrent(b, conc, calls)
		})
	}
}

const echoMethod = "/erlmcp.bench.Echo/Echo"

// echoServiceDesc is a one-method service answering its request.
var echoServiceDesc = grpc.ServiceDesc{
	ServiceName: "erlmcp.bench.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.BytesValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
}
