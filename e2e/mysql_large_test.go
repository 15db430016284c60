package e2e

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
)

// Sizes of TestMySQLLargeTransaction.
const (
	largeRows      = 1_000_000
	largeBuffer    = 64 << 20
	largeHeadroom  = 64 << 20
	fillTxns       = 90   // transactions that fill the buffer before the large one
	fillRowsPerTxn = 1000 // of fillPad bytes each: ~90 MiB of windows, more than the buffer
	fillPad        = 1000 // bytes of padding per filler row
	largeTimeout   = 75 * time.Second
)

// TestMySQLLargeTransaction: one MariaDB transaction of a million rows
// passes through a relay whose buffer (64 MiB) is already full of other
// windows, and reaches a consumer as one whole window of a million events,
// while the relay's peak resident memory stays within buffer + 64 MiB.
//
// The relay runs as a subprocess (`databus relay`), so that its memory is
// measured alone, from the kernel's own high-water mark (VmHWM in
// /proc/<pid>/status): everything the relay process ever had resident, Go
// heap, stacks, binary and runtime included. The consumer (this test
// process) is not counted: it holds the whole window by design (see the
// client package's doc).
func TestMySQLLargeTransaction(t *testing.T) {
	srv := dbtest.MariaDB(t, dbtest.MariaDBArgs("--innodb-buffer-pool-size=256M", "--innodb-log-file-size=256M"))
	srv.Exec(t,
		"CREATE DATABASE big",
		"CREATE TABLE big.t (id INT PRIMARY KEY, v INT NOT NULL, s CHAR(16) NOT NULL)",
		"CREATE TABLE big.fill (id INT PRIMARY KEY, pad VARCHAR(2000) NOT NULL)",
	)
	db := srv.DB(t, "big")
	rp := startLargeRelay(t, srv)
	base := "http://" + rp.addr

	// Fill the buffer past its bound with ordinary windows, so that the
	// large one arrives in a full buffer and eviction runs throughout.
	start := time.Now()
	for i := range fillTxns {
		q := fmt.Sprintf("INSERT INTO fill SELECT seq, REPEAT('x', %d) FROM seq_%d_to_%d", fillPad, i*fillRowsPerTxn+1, (i+1)*fillRowsPerTxn)
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	endFill := largeBinlogSCN(t, db)
	waitLarge(t, 30*time.Second, "the relay to capture the filler transactions", func() bool {
		return largeRelayBuffer(t, base).MaxSCN >= endFill
	})
	filled := largeRelayBuffer(t, base)
	t.Logf("filled the buffer in %v: %d windows, %.1f MiB of %.0f MiB, low watermark %d",
		time.Since(start).Round(time.Millisecond), filled.Windows, largeMiB(filled.Bytes), largeMiB(filled.MaxBytes), filled.LowWatermark)
	if filled.LowWatermark == 0 || filled.Bytes < largeBuffer*3/4 {
		t.Fatalf("the buffer is not full: %+v", filled)
	}

	// The consumer starts at the newest window held and counts.
	h := &largeCounter{}
	c, err := client.New([]string{base}, h, client.WithStart(checkpoint.At(filled.MaxSCN)), client.WithWait(time.Second),
		client.WithRelayRetry(0, 10*time.Millisecond, 500*time.Millisecond), client.WithRequestTimeout(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Errorf("client: %v", err)
		}
	}()

	hwmFill := rp.status(t, "VmHWM")
	// From here VmHWM is the peak while the large transaction passes.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", rp.cmd.Process.Pid), []byte("5"), 0); err != nil {
		t.Fatalf("resetting the relay's VmHWM: %v", err)
	}
	start = time.Now()
	if _, err := db.Exec(fmt.Sprintf("INSERT INTO t SELECT seq, seq %% 1000, LEFT(MD5(seq), 16) FROM seq_1_to_%d", largeRows)); err != nil {
		t.Fatal(err)
	}
	committed := time.Since(start)
	scn := largeBinlogSCN(t, db)
	waitLarge(t, largeTimeout, "the consumer to receive the large window", func() bool {
		select {
		case err := <-done:
			t.Fatalf("client stopped: %v", err)
		default:
		}
		return h.maxSCN() >= scn
	})
	elapsed := time.Since(start)
	hwm, rss, rssFile := rp.status(t, "VmHWM"), rp.status(t, "VmRSS"), rp.status(t, "RssFile")
	after := largeRelayBuffer(t, base)
	metrics := largeRelayMetrics(t, base)

	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bigWindows != 1 || h.bigEvents != largeRows || h.otherEvents != 0 {
		t.Errorf("the consumer saw %d windows of big.t holding %d events (and %d other events); want one window of %d",
			h.bigWindows, h.bigEvents, h.otherEvents, largeRows)
	}
	if want := int64(largeRows) * (largeRows + 1) / 2; h.keySum != want || h.outOfOrder != 0 {
		t.Errorf("key sum %d, want %d; %d keys out of order", h.keySum, want, h.outOfOrder)
	}
	t.Logf("transaction: %d rows committed in %v; delivered whole %v after the commit started (%.0f rows/s end to end), %v after it returned (%.0f rows/s through the relay)",
		largeRows, committed.Round(time.Millisecond), elapsed.Round(time.Millisecond), largeRows/elapsed.Seconds(),
		(elapsed - committed).Round(time.Millisecond), largeRows/(elapsed-committed).Seconds())
	t.Logf("window: %.1f MiB of frames; relay spilled %s window(s), %s chunks; buffer after: %d windows, %.1f MiB in memory, %.1f MiB spilled",
		largeMiB(h.windowBytes), metrics["databus_relay_windows_spilled_total"], metrics["databus_relay_chunks_in_total"],
		after.Windows, largeMiB(after.Bytes), largeMiB(after.SpillBytes))
	heap, _ := strconv.ParseFloat(metrics["go_memstats_heap_inuse_bytes"], 64)
	t.Logf("relay memory: peak RSS (VmHWM) %.1f MiB while the transaction passed, %.1f MiB while the buffer filled; now VmRSS %.1f MiB (%.1f MiB of it mapped files), Go heap in use %.1f MiB; bound %.0f MiB (buffer %.0f MiB + %.0f MiB)",
		largeMiB(hwm), largeMiB(hwmFill), largeMiB(rss), largeMiB(rssFile), heap/(1<<20), largeMiB(largeBuffer+largeHeadroom), largeMiB(largeBuffer), largeMiB(largeHeadroom))
	if h.windowBytes <= largeBuffer {
		t.Errorf("the window (%d bytes) is not larger than the buffer: the test proves nothing", h.windowBytes)
	}
	if hwm > largeBuffer+largeHeadroom {
		t.Errorf("relay peak RSS %.1f MiB while the transaction passed exceeds buffer + headroom (%.0f MiB)", largeMiB(hwm), largeMiB(largeBuffer+largeHeadroom))
	}
}

// largeCounter counts what the consumer receives.
type largeCounter struct {
	mu          sync.Mutex
	last        uint64
	bigWindows  int   // windows with events of big.t
	bigEvents   int   // events of big.t
	otherEvents int   // events of other tables
	keySum      int64 // of big.t's ids
	outOfOrder  int   // big.t ids not one above the previous
	windowBytes int64 // encoded size of the big window's events (approximate: header + key + payload)
}

func (h *largeCounter) OnWindow(ctx context.Context, w *client.Window) error {
	var n, other int
	var sum, size int64
	var prev int64
	var bad int
	for _, e := range w.Events {
		if e.Source != "big.t" {
			other++
			continue
		}
		n++
		k, err := event.DecodeKey(e.Key)
		if err != nil {
			return err
		}
		id := k[0].(int64)
		if id != prev+1 {
			bad++
		}
		prev = id
		sum += id
		size += int64(event.HeaderSize + event.TrailerSize + len(e.Key) + len(e.Payload) + len(e.Before))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = w.SCN
	h.otherEvents += other
	if n > 0 {
		h.bigWindows++
		h.bigEvents += n
		h.keySum += sum
		h.outOfOrder += bad
		h.windowBytes += size
	}
	return nil
}

func (h *largeCounter) OnRollback(context.Context, uint64, error) {}

func (h *largeCounter) maxSCN() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// largeRelay is `databus relay` over a MariaDB source, as a subprocess.
type largeRelay struct {
	addr string
	cmd  *exec.Cmd
}

func startLargeRelay(t *testing.T, srv *dbtest.MariaDBServer) *largeRelay {
	return startSubprocessRelay(t, largeBuffer, fmt.Sprintf(`  mysql:
    host: %s
    port: %d
    user: root
    serverId: 4242
    include: [big.*]
`, srv.Host, srv.Port))
}

// startSubprocessRelay runs `databus relay` with a buffer of maxBytes over
// the source section sourceYAML (indented under "source:"), as a
// subprocess whose memory is measured alone, and waits until it is healthy.
func startSubprocessRelay(tb testing.TB, maxBytes int64, sourceYAML string) *largeRelay {
	tb.Helper()
	dir := tb.TempDir()
	addr := freeAddr(tb)
	cfg := fmt.Sprintf("relay:\n  listen: %s\n  stateDir: %s\n  buffer:\n    maxBytes: %d\nsource:\n%s",
		addr, filepath.Join(dir, "state"), maxBytes, sourceYAML)
	cfgPath, logPath := filepath.Join(dir, "relay.yaml"), filepath.Join(dir, "relay.log")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(databusBin, "relay", "--config", cfgPath, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// The relay sets its own soft memory limit unless GOMEMLIMIT is set.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMEMLIMIT=") && !strings.HasPrefix(kv, "GOGC=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	rp := &largeRelay{addr: addr, cmd: cmd}
	tb.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		if tb.Failed() {
			b, _ := os.ReadFile(logPath)
			tb.Logf("relay log:\n%s", b)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return rp
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the relay did not become healthy: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// status returns a memory figure of the relay process, in bytes, from
// /proc/<pid>/status (VmHWM: peak resident set; VmRSS: resident now).
func (p *largeRelay) status(tb testing.TB, field string) int64 {
	return procStatus(tb, p.cmd.Process.Pid, field)
}

// procStatus returns a memory figure of process pid, in bytes, from
// /proc/<pid>/status (VmHWM: peak resident set; VmRSS: resident now).
func procStatus(tb testing.TB, pid int, field string) int64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			tb.Fatalf("%s: %q", field, rest)
		}
		return kb << 10
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

type largeBufferInfo struct {
	MaxSCN       uint64 `json:"maxScn"`
	LowWatermark uint64 `json:"lowWatermark"`
	Windows      int    `json:"windows"`
	Bytes        int64  `json:"bytes"`
	MaxBytes     int64  `json:"maxBytes"`
	SpillBytes   int64  `json:"spillBytes"`
}

func largeRelayBuffer(tb testing.TB, base string) largeBufferInfo {
	tb.Helper()
	resp, err := http.Get(base + "/v1/buffer")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var in largeBufferInfo
	if err := json.NewDecoder(resp.Body).Decode(&in); err != nil {
		tb.Fatal(err)
	}
	return in
}

// largeRelayMetrics returns the relay's unlabelled databus_* and go_* series.
func largeRelayMetrics(t *testing.T, base string) map[string]string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if name, v, ok := strings.Cut(sc.Text(), " "); ok && (strings.HasPrefix(name, "databus_") || strings.HasPrefix(name, "go_")) {
			out[name] = v
		}
	}
	return out
}

// largeBinlogSCN is the SCN of the binlog's current end: the SCN of the last
// transaction committed.
func largeBinlogSCN(t *testing.T, db *sql.DB) uint64 {
	t.Helper()
	var file string
	var pos uint64
	rows, err := db.Query("SHOW MASTER STATUS")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]any, len(cols))
	vals[0], vals[1] = &file, &pos
	for i := 2; i < len(vals); i++ {
		vals[i] = new(sql.RawBytes)
	}
	if !rows.Next() {
		t.Fatal("SHOW MASTER STATUS returned nothing")
	}
	if err := rows.Scan(vals...); err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(file[strings.LastIndexByte(file, '.')+1:], 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	return n<<32 | pos
}

func waitLarge(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func largeMiB(n int64) float64 { return float64(n) / (1 << 20) }
