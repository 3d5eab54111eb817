package criu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// ErrKilled means the CRIU process died of a signal sent by someone else
// than torpor (the OOM killer, an operator, fault injection) before it
// answered.
var ErrKilled = errors.New("criu was killed")

// swrk is one `criu swrk` child and its RPC socket. go-criu's Criu type keeps
// the child private, so it can neither be started in another network
// namespace or cgroup nor killed on a deadline; this speaks the same RPC with
// go-criu's message types.
type swrk struct {
	cmd  *exec.Cmd
	sock *os.File
}

// startSwrk starts `criu swrk 3` inside netnsPath (if set) and cgroupDir (if
// set), with preload (if set) preloaded into it as fd 4.
func startSwrk(criuPath, netnsPath, cgroupDir string, preload *os.File) (*swrk, error) {
	fds, err := unix.Socketpair(unix.AF_LOCAL, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("start criu swrk: socketpair: %w", err)
	}
	// Our end is non-blocking so it joins Go's poller and a deadline can
	// interrupt a read: after CRIU is killed, tasks it forked may still hold
	// its end of the pair open. CRIU's end stays blocking.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, fmt.Errorf("start criu swrk: %w", err)
	}
	cln := os.NewFile(uintptr(fds[0]), "criu-rpc-client")
	srv := os.NewFile(uintptr(fds[1]), "criu-rpc-server")
	defer srv.Close()

	cmd := exec.Command(criuPath, "swrk", "3")
	cmd.ExtraFiles = []*os.File{srv}
	if preload != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, preload)
		cmd.Env = append(os.Environ(), "LD_PRELOAD=/proc/self/fd/4")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if cgroupDir != "" {
		cg, err := os.OpenFile(cgroupDir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			cln.Close()
			return nil, fmt.Errorf("start criu swrk: open cgroup: %w", err)
		}
		defer cg.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	}
	err = nsrun.InNetNSPath(netnsPath, cmd.Start)
	if err != nil {
		cln.Close()
		return nil, fmt.Errorf("start criu swrk: %w", err)
	}
	return &swrk{cmd: cmd, sock: cln}, nil
}

// call sends req and answers notifications until the final response. It
// kills CRIU when ctx ends. It always reaps the child.
func (s *swrk) call(ctx context.Context, req *rpc.CriuReq, nfy func(Event) error) (resp *rpc.CriuResp, err error) {
	stop := context.AfterFunc(ctx, func() {
		_ = s.cmd.Process.Kill()
		_ = s.sock.SetDeadline(time.Now())
	})
	defer func() {
		stop()
		s.sock.Close()
		werr := s.cmd.Wait()
		if ctx.Err() != nil {
			err = errors.Join(fmt.Errorf("criu killed: %w", context.Cause(ctx)), err)
			return
		}
		var ee *exec.ExitError
		if errors.As(werr, &ee) && ee.ProcessState != nil {
			if ws, ok := ee.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				// Killed by someone else: the broken RPC is only its echo.
				err = fmt.Errorf("%w (%v)", ErrKilled, werr)
				return
			}
		}
		if werr != nil && (err == nil || resp == nil) {
			err = errors.Join(err, fmt.Errorf("criu swrk exited: %w", werr))
		}
	}()

	typ := req.GetType()
	var hookErr error // the first notification hook that failed
	buf := make([]byte, 1<<16)
	for {
		b, err := proto.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("encode criu request: %w", err)
		}
		if _, err := s.sock.Write(b); err != nil {
			return nil, afterHook(hookErr, fmt.Errorf("send criu request: %w", err))
		}
		n, err := s.sock.Read(buf)
		if err != nil {
			return nil, afterHook(hookErr, fmt.Errorf("read criu response: %w", err))
		}
		resp = &rpc.CriuResp{}
		if err := proto.Unmarshal(buf[:n], resp); err != nil {
			return nil, fmt.Errorf("decode criu response: %w", err)
		}
		if !resp.GetSuccess() {
			return resp, afterHook(hookErr, fmt.Errorf("%s request failed: errno %d%s", typ, resp.GetCrErrno(), crErrmsg(resp.GetCrErrmsg())))
		}
		if resp.GetType() != rpc.CriuReqType_NOTIFY {
			if resp.GetType() != typ {
				return resp, fmt.Errorf("unexpected criu response %s to %s", resp.GetType(), typ)
			}
			if hookErr != nil {
				// CRIU ignores some failed answers (e.g. network-unlock).
				return resp, hookErr
			}
			return resp, nil
		}
		// CRIU waits for this answer: whatever nfy does happens at exactly
		// this point of the dump or restore. A failed hook is answered as a
		// failed script: CRIU rolls back instead of waiting.
		ev := Event(resp.GetNotify().GetScript())
		var herr error
		if nfy != nil {
			herr = nfy(ev)
		}
		if herr != nil && hookErr == nil {
			hookErr = fmt.Errorf("criu notification %q: %w", ev, herr)
		}
		req = &rpc.CriuReq{Type: rpc.CriuReqType_NOTIFY.Enum(), NotifySuccess: proto.Bool(herr == nil)}
	}
}

// afterHook is err, led by the failed notification hook that caused it, if
// one did.
func afterHook(hookErr, err error) error {
	if hookErr == nil {
		return err
	}
	return fmt.Errorf("%w; then %w", hookErr, err)
}

// crErrmsg is CRIU's own error message for a failed request, unless it is
// one of the harmless lines CRIU prints on every run (the log's first real
// Error line is reported next to it anyway).
func crErrmsg(msg string) string {
	msg = strings.TrimSpace(msg)
	for _, h := range harmless {
		if strings.Contains(msg, h) {
			return ""
		}
	}
	if msg == "" {
		return ""
	}
	return " " + msg
}
