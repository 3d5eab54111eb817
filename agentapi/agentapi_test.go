package agentapi

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func TestErrorsSurviveRPC(t *testing.T) {
	for _, want := range []error{ErrNotFound, ErrInvalid, ErrState, ErrPermission, ErrUnreachable, context.DeadlineExceeded, context.Canceled} {
		err := FromRPC(ToRPC(fmt.Errorf("job-node j/n0: %w", want)))
		if !errors.Is(err, want) {
			t.Errorf("%v after a round trip: %v, not errors.Is", want, err)
		}
		if err.Error() == "" {
			t.Errorf("%v lost its message", want)
		}
	}
	busy := FromRPC(ToRPC(fmt.Errorf("%w: job j is busy", ErrBusy)))
	if !errors.Is(busy, ErrBusy) || !errors.Is(busy, ErrState) || errors.Is(FromRPC(ToRPC(ErrState)), ErrBusy) {
		t.Errorf("ErrBusy after a round trip: %v; it must stay ErrBusy and ErrState, and ErrState must not become ErrBusy", busy)
	}
	exists := FromRPC(ToRPC(fmt.Errorf("%w: job-node j/n0 on h1", ErrExists)))
	if !errors.Is(exists, ErrExists) || !errors.Is(exists, ErrState) || errors.Is(FromRPC(ToRPC(ErrState)), ErrExists) || errors.Is(exists, ErrBusy) {
		t.Errorf("ErrExists after a round trip: %v; it must stay ErrExists and ErrState, and neither ErrState nor ErrBusy become it", exists)
	}
	if err := FromRPC(ToRPC(errors.New("plain"))); err == nil || errors.Is(err, ErrInvalid) || err.Error() != "plain" {
		t.Errorf("plain error after a round trip: %v", err)
	}
	if ToRPC(nil) != nil || FromRPC(nil) != nil {
		t.Error("nil must stay nil")
	}
}

func TestNodeSpecWire(t *testing.T) {
	for _, n := range []NodeSpec{
		{Name: "n0", Host: "h1", IP: "198.19.0.10/15", Hostname: "j-n0", Argv: []string{"a", "b"}, Env: []string{"X=1"}, Dir: "/w",
			User: &Creds{UID: 1000, GID: 1000, Groups: []int{27, 100}}},
		{Name: "n1", Host: "h2", Argv: []string{"a"}, Keep: []string{"/w/out", "/w/log"}, KeepMax: 5 << 30},
	} {
		if got := NodeFromPB(NodeToPB(n)); !reflect.DeepEqual(got, n) {
			t.Errorf("round trip: %+v, want %+v", got, n)
		}
	}
	if got := NodeFromPB(nil); !reflect.DeepEqual(got, NodeSpec{}) {
		t.Errorf("nil: %+v", got)
	}
}
