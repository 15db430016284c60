package dbtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one running server program: a child of the test binary in its
// own process group, so that it and everything it forks (PostgreSQL
// backends) can be signalled at once.
type process struct {
	cmd         *exec.Cmd
	pgid        int
	instanceDir string        // removed by shutdown if the owner never cleaned up
	done        chan struct{} // closed after cmd.Wait returned; waitErr is set before
	waitErr     error
}

// live is the set of processes started and not yet reaped, for shutdown.
var live struct {
	mu    sync.Mutex
	procs map[*process]struct{}
}

func liveProcesses() []*process {
	live.mu.Lock()
	defer live.mu.Unlock()
	ps := make([]*process, 0, len(live.procs))
	for p := range live.procs {
		ps = append(ps, p)
	}
	return ps
}

// startProcess starts path with args, its stdout and stderr appended to
// logPath. cred, when not nil, is the user the program runs as.
//
// The goroutine that waits for the program is owned by the process: it ends
// when the program exits, which stop and kill wait for.
func startProcess(path string, args []string, dir, logPath, instanceDir string, cred *syscall.Credential) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o666)
	if err != nil {
		return nil, fmt.Errorf("dbtest: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Env = minimalEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// A backstop only: the kernel sends it when the thread that forked
		// the child exits, which for a Go program is normally the whole
		// process. Go applies it after the credential change, which would
		// otherwise clear it.
		Pdeathsig:  syscall.SIGKILL,
		Credential: cred,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("dbtest: start %s: %w", path, err)
	}
	p := &process{cmd: cmd, pgid: cmd.Process.Pid, instanceDir: instanceDir, done: make(chan struct{})}
	live.mu.Lock()
	if live.procs == nil {
		live.procs = make(map[*process]struct{})
	}
	live.procs[p] = struct{}{}
	live.mu.Unlock()
	go func() {
		p.waitErr = cmd.Wait()
		live.mu.Lock()
		delete(live.procs, p)
		live.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the program has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// attemptContext returns a context for one readiness attempt: it ends after
// d or as soon as the program exits, so that an attempt stuck on a port that
// another program accepted on does not outlive our own failed server. The
// caller must call cancel, which also ends the watching goroutine.
func (p *process) attemptContext(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// stop asks the program to shut down with sig (sent to the whole group when
// group is set, else to the leader only), waits up to stopTimeout, then
// kills the group. It returns an error when the polite way did not work.
func (p *process) stop(sig syscall.Signal, group bool) error {
	target := p.pgid
	if group {
		target = -p.pgid
	}
	_ = syscall.Kill(target, sig)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		p.reapGroup()
		return nil
	case <-timer.C:
		p.kill()
		return fmt.Errorf("dbtest: %s did not exit within %v of %v; killed", p.cmd.Path, stopTimeout, sig)
	}
}

// kill sends SIGKILL to the group and to every descendant of the program,
// and waits until all of them are gone.
//
// The descendants matter: PostgreSQL's backends and auxiliary processes
// call setsid(), so they are not in the postmaster's group, and a new
// postmaster refuses to start ("pre-existing shared memory block is still in
// use") while one of the old ones is alive. They would exit by themselves on
// noticing the postmaster's death, but not before kill returns.
func (p *process) kill() {
	procs := scanProc()
	desc := procs.descendants(p.pgid)
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	for _, pid := range desc {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	<-p.done
	waitGone(p.pgid, desc)
}

// reapGroup makes sure no member of the group survives the leader, and waits
// until they are gone.
func (p *process) reapGroup() {
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	waitGone(p.pgid, nil)
}

// waitGone waits, for at most 10 s, until no process of group pgid and none
// of pids is alive. Orphans are reaped by init, not by us (and in a
// container possibly never), so "gone" means dead or zombie.
func waitGone(pgid int, pids []int) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if !scanProc().anyAlive(pgid, pids) {
			return
		}
		time.Sleep(pollInterval)
	}
}

// procInfo is what /proc/<pid>/stat says about a process.
type procInfo struct {
	live bool // not a zombie
	ppid int
	pgrp int
}

// procTable maps pids to what /proc says about them at one moment.
type procTable map[int]procInfo

// scanProc reads /proc/*/stat.
func scanProc() procTable {
	t := procTable{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return t
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if info, ok := procStat(pid); ok {
			t[pid] = info
		}
	}
	return t
}

// descendants returns the pids of the live descendants of pid.
func (t procTable) descendants(pid int) []int {
	children := map[int][]int{}
	for p, info := range t {
		if info.live {
			children[info.ppid] = append(children[info.ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// anyAlive reports whether a live process belongs to group pgid or is one
// of pids.
func (t procTable) anyAlive(pgid int, pids []int) bool {
	for _, info := range t {
		if info.live && info.pgrp == pgid {
			return true
		}
	}
	for _, pid := range pids {
		if t[pid].live {
			return true
		}
	}
	return false
}

// procStat reads /proc/pid/stat. ok is false when there is no such process.
func procStat(pid int) (info procInfo, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, false
	}
	// The command name (field 2) is in parentheses and may contain spaces;
	// the fields after the last ')' are: state ppid pgrp ...
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procInfo{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 3 {
		return procInfo{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgrp, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return procInfo{}, false
	}
	return procInfo{live: f[0] != "Z" && f[0] != "X", ppid: ppid, pgrp: pgrp}, true
}
