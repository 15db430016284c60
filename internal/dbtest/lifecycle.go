package dbtest

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// lifecycle is what MariaDBServer and PostgresServer share: the running
// process, how to start and cleanly stop it, and the guard that keeps tests
// from disturbing a shared server. Each kind sets start and stop when it
// is constructed; the exported Stop, Kill, Start and Restart are promoted
// from here.
type lifecycle struct {
	kind   string // "MariaDB" or "PostgreSQL", for messages
	ctor   string // what a test should call instead of disturbing a shared server
	shared bool   // a Shared* server: tests must not stop it
	// start starts the process and stores it in proc (with mu held by
	// start itself); portTaken tells a retry on another port may succeed.
	start func() (portTaken bool, err error)
	// stop shuts a process down cleanly.
	stop func(*process) error

	mu   sync.Mutex // guards proc
	proc *process   // the running server; nil while stopped
}

// take removes the running process from the lifecycle and returns it, or
// nil when the server is stopped.
func (l *lifecycle) take() *process {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.proc
	l.proc = nil
	return p
}

func (l *lifecycle) mustNotBeShared(tb testing.TB, op string) {
	tb.Helper()
	if l.shared {
		tb.Fatalf("dbtest: %s on the shared %s server would disturb other tests; use %s", op, l.kind, l.ctor)
	}
}

// Stop shuts the server down cleanly (SIGKILL after 20 s, which fails the
// test). The data directory and the port are kept for Start. Stopping a
// stopped server does nothing.
func (l *lifecycle) Stop(tb testing.TB) {
	tb.Helper()
	l.mustNotBeShared(tb, "Stop")
	if p := l.take(); p != nil {
		if err := l.stop(p); err != nil {
			tb.Fatal(err)
		}
	}
}

// Kill sends SIGKILL to the server and all its processes, like a crash,
// and waits until they are gone. Start then runs crash recovery on the same
// data directory. Killing a stopped server does nothing.
func (l *lifecycle) Kill(tb testing.TB) {
	tb.Helper()
	l.mustNotBeShared(tb, "Kill")
	if p := l.take(); p != nil {
		p.kill()
	}
}

// Start starts a stopped or killed server again with the same data
// directory, port and options, and waits until it is ready.
func (l *lifecycle) Start(tb testing.TB) {
	tb.Helper()
	l.mustNotBeShared(tb, "Start")
	if _, err := l.start(); err != nil {
		tb.Fatal(err)
	}
}

// Restart is Stop then Start.
func (l *lifecycle) Restart(tb testing.TB) {
	tb.Helper()
	l.Stop(tb)
	l.Start(tb)
}

// close stops the server if it runs and removes its directory dir.
func (l *lifecycle) close(dir string) error {
	var err error
	if p := l.take(); p != nil {
		err = l.stop(p)
	}
	if rmErr := os.RemoveAll(dir); rmErr != nil && err == nil {
		err = fmt.Errorf("dbtest: %w", rmErr)
	}
	return err
}
