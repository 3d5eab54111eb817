package sandbox

import (
	"errors"
	"fmt"
)

// State is where a sandbox is in its life.
type State int

const (
	// Created: namespace, veth, address and cgroup exist; no process yet.
	Created State = iota
	// Running: the tree (started or restored) is alive.
	Running
	// Frozen: the tree is frozen by its cgroup.
	Frozen
	// Dumped: the tree was dumped and killed by CRIU; the sandbox can take a
	// restore or be destroyed.
	Dumped
	// Exited: the tree ended on its own or was killed.
	Exited
	// Destroyed: nothing is left.
	Destroyed
)

func (s State) String() string {
	switch s {
	case Created:
		return "created"
	case Running:
		return "running"
	case Frozen:
		return "frozen"
	case Dumped:
		return "dumped"
	case Exited:
		return "exited"
	case Destroyed:
		return "destroyed"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// ErrIllegalTransition is wrapped by every refused operation.
var ErrIllegalTransition = errors.New("illegal sandbox transition")

// TransitionError says which operation was refused in which state.
type TransitionError struct {
	Sandbox string
	Op      string
	From    State
	Allowed []State
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("sandbox %s: cannot %s while %s (allowed in %v)", e.Sandbox, e.Op, e.From, e.Allowed)
}

func (e *TransitionError) Unwrap() error { return ErrIllegalTransition }

// allowed lists, per operation, the states it may start from.
var allowed = map[string][]State{
	"start":   {Created},
	"freeze":  {Running},
	"thaw":    {Frozen},
	"dump":    {Running, Frozen},
	"restore": {Created, Dumped},
	"kill":    {Running, Frozen},
	"destroy": {Created, Running, Frozen, Dumped, Exited},
}

func check(name, op string, from State) error {
	for _, s := range allowed[op] {
		if s == from {
			return nil
		}
	}
	return &TransitionError{Sandbox: name, Op: op, From: from, Allowed: allowed[op]}
}
