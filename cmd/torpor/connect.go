package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	apiv1 "github.com/torpor-hpc/torpor/api/v1"
	"github.com/torpor-hpc/torpor/client"
	"github.com/torpor-hpc/torpor/internal/config"
	"github.com/torpor-hpc/torpor/internal/embedded"
	"github.com/torpor-hpc/torpor/shim/criu"
)

// session is a command's link to a coordinator: one that runs, or one this
// process embeds because none answers (see embedded).
type session struct {
	sock  string
	cl    apiv1.CoordinatorClient
	done  func()
	stack *embedded.Stack // non-nil: this process hosts the coordinator
	emb   embedOptions
}

// embedOptions are what an embedded coordinator is started with.
type embedOptions struct {
	// runDir and checkpointDir override the configuration ("" = keep).
	runDir, checkpointDir string
	logLevel              string
}

// busyWait bounds how long a command waits for another process that is
// starting the embedded coordinator to answer on its socket.
const busyWait = time.Minute

// connect dials the coordinator at sockFlag (or $TORPOR_SOCKET, or the
// default). If none answers there, it embeds one in this process (root only),
// which takes over whatever an earlier torpor process left running; if
// another process hosts it, it waits for that one's socket.
func connect(ctx context.Context, sockFlag string, eo embedOptions) (*session, error) {
	s := &session{sock: client.SocketPath(sockFlag), emb: eo}
	if err := s.dial(ctx, false); err != nil {
		return nil, err
	}
	return s, nil
}

// dial connects to the coordinator, embedding one if none answers. Again
// (after the coordinator this command talked to went away), it embeds one
// only if the one that went away was embedded too, for this state
// directory; else it waits for that coordinator (a daemon restarting) to
// answer again.
func (s *session) dial(ctx context.Context, again bool) error {
	deadline := time.Now().Add(busyWait)
	pause := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
			return nil
		}
	}
	for {
		if client.Listens(s.sock) {
			cl, done, err := client.Dial(s.sock)
			if err != nil {
				return err
			}
			s.cl, s.done = cl, done
			return nil
		}
		if s.stack != nil {
			return fmt.Errorf("the coordinator this process embeds does not answer at %s", s.sock)
		}
		cfg, err := config.Load("")
		if err != nil {
			return err
		}
		if again && (os.Geteuid() != 0 || embedded.Socket(cfg.StateDir) != s.sock) {
			if time.Now().After(deadline) {
				return noCoordinator(s.sock, fmt.Sprintf("it did not come back within %v", busyWait))
			}
			if err := pause(); err != nil {
				return err
			}
			continue
		}
		if os.Geteuid() != 0 {
			return noCoordinator(s.sock, "with no daemons, only root can run torpor: ask your administrator to start `torpor coordinator` and `torpor shim`")
		}
		stack, err := s.embed(ctx, cfg)
		if errors.Is(err, embedded.ErrBusy) {
			// Another process hosts it, or is starting it: use its socket.
			if other := embedded.Socket(cfg.StateDir); other != "" && other != s.sock && client.Listens(other) {
				s.sock = other
				continue
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("another torpor process hosts the coordinator of %s but does not answer at %s; if it hangs, end it", cfg.StateDir, s.sock)
			}
			if err := pause(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		s.stack = stack
		if stack.Adopted > 0 {
			fmt.Fprintf(os.Stderr, "torpor: took over %d job-node(s) that an earlier torpor process left running\n", stack.Adopted)
		}
	}
}

func (s *session) embed(ctx context.Context, cfg config.Config) (*embedded.Stack, error) {
	bin, err := criu.Locator{Config: cfg.CRIU}.Find()
	if err != nil {
		return nil, err
	}
	if s.emb.checkpointDir != "" {
		cfg.CheckpointDir = s.emb.checkpointDir
	}
	level := s.emb.logLevel
	if level == "" {
		level = "warn"
	}
	return embedded.Start(ctx, embedded.Config{
		StateDir: cfg.StateDir, CheckpointDir: cfg.CheckpointDir, Socket: s.sock, RunDir: s.emb.runDir,
		CgroupParent: "/" + strings.Trim(cfg.CgroupRoot, "/"), CRIU: bin, Log: newLogger(level),
	})
}

// reconnect is for a command that outlived the process that hosted its
// coordinator: it connects again, embedding one if none answers.
func (s *session) reconnect(ctx context.Context) (apiv1.CoordinatorClient, error) {
	if s.done != nil {
		s.done()
		s.done = nil
	}
	if err := s.dial(ctx, true); err != nil {
		return nil, err
	}
	return s.cl, nil
}

// runDir is where job-node output files are: the embedded stack's, else
// the one given, else the default.
func (s *session) runDir(given string) string {
	switch {
	case s.stack != nil:
		return s.stack.RunDir
	case given != "":
		return given
	}
	return embedded.DefaultRunDir
}

// close disconnects and, if this process hosts the coordinator, stops it;
// job-nodes still running are left for the next command (said if tell).
func (s *session) close(ctx context.Context, tell bool) {
	if s.done != nil {
		s.done()
	}
	if s.stack == nil {
		return
	}
	if left := s.stack.Close(ctx); left > 0 && tell {
		fmt.Fprintf(os.Stderr, "torpor: %d job-node(s) still run without a coordinator; the next torpor command (`torpor ps`, `torpor wait JOB`) takes them over\n", left)
	}
}

// noCoordinator says that nothing answers at sock, and what to do.
func noCoordinator(sock, what string) error {
	if _, err := os.Stat(sock); err == nil {
		return fmt.Errorf("no coordinator answers at %s: the coordinator that served it is gone (the torpor process or daemon that hosted it ended). "+
			"Jobs keep their checkpoints: `torpor restart JOB` brings one back from its last checkpoint; %s", sock, what)
	}
	return fmt.Errorf("no coordinator at %s (set --socket or $TORPOR_SOCKET for another); %s", sock, what)
}
