package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
)

// Sizes of BenchmarkMariaDBLargeTransaction.
const (
	b2Rows     = 2_000_000
	b2Buffer   = 64 << 20 // the relay's buffer.maxBytes
	b2Headroom = 64 << 20 // peak RSS is compared with b2Buffer + b2Headroom
	b2Timeout  = 90 * time.Second
)

// b2Figures are the measurements of one run of
// BenchmarkMariaDBLargeTransaction.
type b2Figures struct {
	insert, commit  time.Duration // the INSERT statement, then its COMMIT
	ingest          time.Duration // COMMIT returned -> the relay's buffer holds the window
	delivered       time.Duration // COMMIT returned -> the client has the whole window
	raw             time.Duration // go-mysql BinlogSyncer over the same transaction
	peakRSS, rssNow int64         // the relay's VmHWM while the transaction passed, VmRSS after
}

// b2Last is the last run's figures: see the guard in the benchmark.
var b2Last *b2Figures

// BenchmarkMariaDBLargeTransaction (B2): ONE MariaDB transaction inserting
// 2,000,000 narrow rows (INSERT ... SELECT from the sequence engine's
// seq_1_to_2000000) passes through a `databus relay` subprocess (source
// mysql, startAt oldest, buffer.maxBytes 64 MiB) to one client.Client in
// the benchmark's process, which must receive it as one window of exactly
// 2,000,000 events.
//
// Reported: the relay's rate from the moment the COMMIT returned until the
// client holds the whole window (ingest + delivery; MariaDB writes the
// transaction to the binlog at commit, so this isolates capture from the
// database's own work), the same until the relay's buffer holds the window
// (ingest alone), end to end from the start of the INSERT, and the relay's
// peak resident memory (VmHWM of the subprocess, reset through
// /proc/<pid>/clear_refs just before the transaction, as
// TestMySQLLargeTransaction does); beside the ceiling measured in the same
// run: a bare go-mysql BinlogSyncer reading the same transaction, from the
// binlog position before it to its XID event, decoding rows as go-mysql
// does by default (and as the adapter configures it); the best of two such
// reads made once the relay is idle, so the ratio errs against the relay.
//
// The work is done once whatever b.N: the transaction is the workload.
//
//	DATABUS_REQUIRE_SERVERS=1 go test -run XX -bench MariaDBLargeTransaction -benchtime 1x ./e2e
func BenchmarkMariaDBLargeTransaction(b *testing.B) {
	// The testing package calls a benchmark first with b.N = 1 and, under
	// -benchtime Nx, again with b.N = N. One transaction is the workload,
	// measured once: a second call re-reports the first call's figures.
	// (Its ns/op, B/op and allocs/op are then those of the re-report: read
	// the figures of -benchtime 1x.)
	if b.N > 1 && b2Last != nil {
		b2Last.report(b, false)
		return
	}
	b2Last = nil
	f := runB2(b)
	b2Last = f
	f.report(b, true)
}

func runB2(b *testing.B) *b2Figures {
	srv := dbtest.MariaDB(b, dbtest.MariaDBArgs("--innodb-buffer-pool-size=512M", "--innodb-log-file-size=512M"))
	srv.Exec(b,
		"CREATE DATABASE big",
		"CREATE TABLE big.t (id INT PRIMARY KEY, v INT NOT NULL, s CHAR(16) NOT NULL)",
		"CREATE TABLE big.warm (id INT PRIMARY KEY)",
	)
	db := srv.DB(b, "big")
	rp := startB2Relay(b, srv)
	base := "http://" + rp.addr

	// The client follows the relay from the start; a warm-up transaction
	// proves both caught up (and the client long-polling) before the large
	// one is written.
	h := &b2Counter{warmed: make(chan struct{}), whole: make(chan struct{})}
	c, err := client.New([]string{base}, h, client.WithStart(checkpoint.Start()), client.WithWait(time.Second),
		client.WithRelayRetry(0, 10*time.Millisecond, 500*time.Millisecond), client.WithRequestTimeout(60*time.Second))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			b.Errorf("client: %v", err)
		}
	}()
	if _, err := db.Exec("INSERT INTO warm VALUES (1)"); err != nil {
		b.Fatal(err)
	}
	select {
	case <-h.warmed:
	case err := <-done:
		b.Fatalf("client stopped: %v", err)
	case <-time.After(30 * time.Second):
		b.Fatal("the client did not receive the warm-up window in 30s")
	}

	startFile, startPos, _ := mariadbEnd(b, db)
	// From here VmHWM is the peak while the large transaction passes.
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", rp.cmd.Process.Pid), []byte("5"), 0); err != nil {
		b.Fatalf("resetting the relay's VmHWM: %v", err)
	}

	b.ReportAllocs()
	b.ResetTimer()
	f := &b2Figures{}
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if _, err := tx.Exec(fmt.Sprintf("INSERT INTO t SELECT seq, seq %% 1000, LEFT(MD5(seq), 16) FROM seq_1_to_%d", b2Rows)); err != nil {
		b.Fatal(err)
	}
	f.insert = time.Since(start)
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	committed := time.Now()
	f.commit = committed.Sub(start) - f.insert
	endFile, endPos, endSCN := mariadbEnd(b, db)

	deadline := time.After(b2Timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for f.delivered == 0 {
		select {
		case <-h.whole:
			f.delivered = h.arrival().Sub(committed)
		case err := <-done:
			b.Fatalf("client stopped: %v", err)
		case <-deadline:
			b.Fatalf("the client did not receive the large window within %v of the commit (%d windows, %d events so far)", b2Timeout, h.windows(), h.events())
		case <-tick.C:
			if f.ingest == 0 && largeRelayBuffer(b, base).MaxSCN >= endSCN {
				f.ingest = time.Since(committed)
			}
		}
	}
	b.StopTimer()
	f.peakRSS, f.rssNow = procStatus(b, rp.cmd.Process.Pid, "VmHWM"), procStatus(b, rp.cmd.Process.Pid, "VmRSS")
	if f.ingest == 0 || f.ingest > f.delivered {
		// Polled every 10 ms: the window reached the client before a poll saw it in the buffer.
		f.ingest = f.delivered
	}
	after := largeRelayBuffer(b, base)

	// The ceiling, in the same run, once the relay is idle: the best of two
	// reads, as the machine is shared and noisy. The client's copy of the
	// window is garbage by now: collect it first, not during a read.
	runtime.GC()
	for i := range 2 {
		d, rows := rawTxn(b, srv, startFile, startPos, endFile, endPos)
		if rows != b2Rows {
			b.Fatalf("raw BinlogSyncer saw %d rows of big.t, want %d", rows, b2Rows)
		}
		b.Logf("raw BinlogSyncer read %d: %.0f rows/s", i+1, rate(b2Rows, d))
		if f.raw == 0 || d < f.raw {
			f.raw = d
		}
	}

	// By now any stray window would have arrived.
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.bigWindows != 1 || h.bigEvents != b2Rows || h.otherEvents != 0 {
		b.Fatalf("the client saw %d windows of big.t holding %d events (and %d other events); want one window of %d",
			h.bigWindows, h.bigEvents, h.otherEvents, b2Rows)
	}
	if want := int64(b2Rows) * (b2Rows + 1) / 2; h.keySum != want || h.outOfOrder != 0 {
		b.Fatalf("key sum %d, want %d; %d keys out of order", h.keySum, want, h.outOfOrder)
	}
	if h.scn != endSCN {
		b.Errorf("the window has SCN %d, want %d (the binlog's end after the commit)", h.scn, endSCN)
	}
	b.Logf("B2 window: SCN %d, %d events, %.1f MiB of frames; relay buffer after: %d windows, %.1f MiB in memory, %.1f MiB spilled",
		h.scn, h.bigEvents, largeMiB(h.windowBytes), after.Windows, largeMiB(after.Bytes), largeMiB(after.SpillBytes))
	return f
}

// report reports f's metrics and, with summary, logs them in one line.
func (f *b2Figures) report(b *testing.B, summary bool) {
	relayR, ingestR := rate(b2Rows, f.delivered), rate(b2Rows, f.ingest)
	e2eR, rawR := rate(b2Rows, f.insert+f.commit+f.delivered), rate(b2Rows, f.raw)
	b.ReportMetric(relayR, "relay-rows/s")
	b.ReportMetric(ingestR, "ingest-rows/s")
	b.ReportMetric(e2eR, "e2e-rows/s")
	b.ReportMetric(rawR, "raw-rows/s")
	b.ReportMetric(100*relayR/rawR, "relay/raw-%")
	b.ReportMetric(largeMiB(f.peakRSS), "peak-RSS-MiB")
	if !summary {
		return
	}
	verdict := "within"
	if f.peakRSS > b2Buffer+b2Headroom {
		verdict = "EXCEEDS"
	}
	b.Logf("B2 MariaDB one %d-row transaction (INSERT %v, COMMIT %v): relay %.0f rows/s commit->client (ingest %.0f rows/s), "+
		"end to end %.0f rows/s from the INSERT; raw go-mysql BinlogSyncer %.0f rows/s; ours/raw %.2f; "+
		"relay peak RSS %.1f MiB %s buffer + 64 MiB = %.0f MiB (VmRSS after %.1f MiB)",
		b2Rows, f.insert.Round(time.Millisecond), f.commit.Round(time.Millisecond), relayR, ingestR, e2eR, rawR, relayR/rawR,
		largeMiB(f.peakRSS), verdict, largeMiB(b2Buffer+b2Headroom), largeMiB(f.rssNow))
}

// b2Counter counts what the client receives and signals the arrival of
// the window of big.t.
type b2Counter struct {
	warmed    chan struct{} // closed at the warm-up window
	whole     chan struct{} // closed at the first window with events of big.t
	warmOnce  sync.Once
	wholeOnce sync.Once

	mu          sync.Mutex
	at          time.Time // when the first window of big.t reached OnWindow
	scn         uint64    // its SCN
	nWindows    int       // windows received
	bigWindows  int       // windows with events of big.t
	bigEvents   int       // events of big.t
	otherEvents int       // events of other tables, warm-up aside
	keySum      int64     // of big.t's ids
	outOfOrder  int       // big.t ids not one above the previous
	windowBytes int64     // encoded size of big.t's events (approximate: header + trailer + key + payload)
}

func (h *b2Counter) OnWindow(_ context.Context, w *client.Window) error {
	now := time.Now() // the client hands over a window only whole
	var n, other, warm, bad int
	var sum, size, prev int64
	for _, e := range w.Events {
		switch e.Source {
		case "big.t":
		case "big.warm":
			warm++
			continue
		default:
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
	h.nWindows++
	h.otherEvents += other
	if n > 0 {
		if h.bigWindows == 0 {
			h.at, h.scn = now, w.SCN
		}
		h.bigWindows++
		h.bigEvents += n
		h.keySum += sum
		h.outOfOrder += bad
		h.windowBytes += size
	}
	h.mu.Unlock()
	if warm > 0 {
		h.warmOnce.Do(func() { close(h.warmed) })
	}
	if n > 0 {
		h.wholeOnce.Do(func() { close(h.whole) })
	}
	return nil
}

func (h *b2Counter) OnRollback(context.Context, uint64, error) {}

func (h *b2Counter) arrival() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.at
}

func (h *b2Counter) windows() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nWindows
}

func (h *b2Counter) events() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bigEvents
}

// startB2Relay runs `databus relay` over srv as a subprocess (so that its
// memory is measured alone), from the oldest binlog, with a 64 MiB buffer.
func startB2Relay(tb testing.TB, srv *dbtest.MariaDBServer) *largeRelay {
	return startSubprocessRelay(tb, b2Buffer, fmt.Sprintf(`  mysql:
    host: %s
    port: %d
    user: root
    serverId: %d
    startAt: oldest
    include: [big.*]
`, srv.Host, srv.Port, mysqlServerIDs.Add(1)))
}

// rawTxn reads the binlog from (file, pos) to the XID event ending at
// (endFile, endPos) with a bare go-mysql BinlogSyncer configured as the
// adapter configures its own (rows decoded, go-mysql's defaults otherwise),
// and returns the time it took, connection included, and the rows of big.t
// it saw.
func rawTxn(b *testing.B, srv *dbtest.MariaDBServer, file string, pos uint32, endFile string, endPos uint32) (time.Duration, int) {
	b.Helper()
	start := time.Now()
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: mysqlServerIDs.Add(1), Flavor: gomysql.MariaDBFlavor, Host: srv.Host, Port: uint16(srv.Port), User: "root",
		ParseTime: false, TimestampStringLocation: time.UTC, DiscardGTIDSet: true, EventCacheCount: 1024,
		Logger: warnLogger(b),
	})
	defer syncer.Close()
	st, err := syncer.StartSync(gomysql.Position{Name: file, Pos: pos})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), b2Timeout)
	defer cancel()
	rows := 0
	for {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			b.Fatal(err)
		}
		switch e := ev.Event.(type) {
		case *replication.RotateEvent:
			file = string(e.NextLogName)
		case *replication.RowsEvent:
			if string(e.Table.Schema) == "big" && string(e.Table.Table) == "t" {
				rows += len(e.Rows)
			}
		}
		if file == endFile && ev.Header.LogPos >= endPos && ev.Header.EventType == replication.XID_EVENT {
			return time.Since(start), rows
		}
	}
}
