package relay

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/databus-go/databus/event"
)

// The full-buffer memory measurement: a relay with the default 64 MiB
// buffer, filled about three times over (so eviction runs and the buffer
// stays full), while rssClients stream the whole buffer over loopback HTTP.
// Config documents the goal: about Buffer.MaxBytes + 64 MiB of RSS with the
// relay's default soft memory limit.
const (
	rssBuffer  = 64 << 20
	rssClients = 4
	// rssHeadroom is the RSS the relay may take beyond its buffer.
	rssHeadroom = 64 << 20
	// rssSettle is how long the clients keep streaming the full buffer,
	// after the source has emitted everything, before the measurement.
	rssSettle = 2 * time.Second
)

// rssResult is one full-buffer measurement, in bytes.
type rssResult struct {
	baseline  int64 // VmRSS before the relay starts
	rss, hwm  int64 // VmRSS and VmHWM with the buffer full and clients streaming
	buffer    int64 // Info().Bytes
	heapInuse int64 // runtime.MemStats.HeapInuse
	memLimit  int64 // the Go memory limit while the relay runs
	gcs       uint32
	streamed  int64 // bytes the clients read
	elapsed   time.Duration
}

// BenchmarkFullBufferRSS measures the process's RSS with a full 64 MiB
// buffer under the relay's own soft memory limit (GOMEMLIMIT must be unset).
// It measures once per invocation whatever b.N; run it with -benchtime 1x.
// The clients run in the same process, so their (small) buffers are part of
// the figures; baseline-MiB is the test binary alone.
func BenchmarkFullBufferRSS(b *testing.B) {
	b.ReportAllocs()
	var m *rssResult
	for b.Loop() {
		if m == nil {
			m = measureFullBufferRSS(b)
		}
	}
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	b.ReportMetric(mib(m.baseline), "baseline-MiB")
	b.ReportMetric(mib(m.rss), "rss-MiB")
	b.ReportMetric(mib(m.hwm), "hwm-MiB")
	b.ReportMetric(mib(m.hwm-m.baseline), "hwm-over-baseline-MiB")
	b.ReportMetric(mib(m.buffer), "buffer-MiB")
	b.ReportMetric(mib(m.heapInuse), "heap-inuse-MiB")
	b.ReportMetric(mib(m.memLimit), "memlimit-MiB")
	b.ReportMetric(float64(m.gcs), "gcs")
	b.ReportMetric(float64(m.streamed)/m.elapsed.Seconds()/1e6, "MB/s")
}

// TestFullBufferRSS checks the documented memory goal: with a full buffer,
// the relay's peak RSS stays within Buffer.MaxBytes + 64 MiB of what the test
// binary took before it started. It takes several seconds and a quiet
// machine, so it runs only when DATABUS_RSS_TEST=1.
func TestFullBufferRSS(t *testing.T) {
	if os.Getenv("DATABUS_RSS_TEST") != "1" {
		t.Skip("set DATABUS_RSS_TEST=1 to measure the relay's RSS with a full buffer")
	}
	m := measureFullBufferRSS(t)
	mib := func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
	t.Logf("baseline %s, RSS %s, peak RSS %s (peak - baseline %s), buffer %s, heap in use %s, memory limit %s, %d GCs, clients read %s",
		mib(m.baseline), mib(m.rss), mib(m.hwm), mib(m.hwm-m.baseline), mib(m.buffer), mib(m.heapInuse), mib(m.memLimit), m.gcs, mib(m.streamed))
	if limit := int64(rssBuffer + rssHeadroom); m.hwm-m.baseline > limit {
		t.Errorf("peak RSS %s is %s above the baseline %s: more than buffer.maxBytes + 64 MiB = %s",
			mib(m.hwm), mib(m.hwm-m.baseline), mib(m.baseline), mib(limit))
	}
}

// measureFullBufferRSS runs the relay and its clients, measures, and stops
// them all.
func measureFullBufferRSS(tb testing.TB) *rssResult {
	tb.Helper()
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		tb.Skipf("GOMEMLIMIT=%s is set: this measures the relay's default soft memory limit", v)
	}
	windows := uint64(3*rssBuffer) / (benchEventsPerWindow*200 + 64)
	cfg := Config{Listen: "127.0.0.1:0", StateDir: tb.TempDir(), Buffer: BufferConfig{MaxBytes: rssBuffer}}
	r, err := New(cfg, &benchSource{windows: windows}, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}

	// The baseline: what the test binary takes on its own, without what
	// earlier tests of the same process left to the collector. Then the peak
	// (VmHWM) is reset, so that it covers the relay's run only.
	runtime.GC()
	debug.FreeOSMemory()
	before, err := readProcStatus()
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		tb.Logf("cannot reset VmHWM (%v): the peak may predate this measurement", err)
	}
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	stopped := false
	stopRelay := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			tb.Error("Run did not return within 15s of cancel")
		}
	}
	defer stopRelay()
	select {
	case <-r.ready:
	case err := <-done:
		stopped = true
		tb.Fatalf("Run: %v", err)
	}
	base := "http://" + r.Addr()
	start := time.Now()

	cctx, ccancel := context.WithCancel(context.Background())
	var streamed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, rssClients)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: rssClients}, Timeout: 30 * time.Second}
	for range rssClients {
		c := &rssClient{http: hc, base: base, br: bufio.NewReaderSize(nil, 64<<10), streamed: &streamed}
		wg.Go(func() {
			if err := c.run(cctx); err != nil {
				errs <- err
				ccancel()
			}
		})
	}
	stopClients := func() {
		ccancel()
		wg.Wait()
		hc.CloseIdleConnections()
	}
	defer stopClients()

	deadline := time.Now().Add(60 * time.Second)
	for r.Buffer().LastSCN() < windows && cctx.Err() == nil {
		if time.Now().After(deadline) {
			tb.Fatalf("the source emitted %d of %d windows in 60s", r.Buffer().LastSCN(), windows)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-time.After(rssSettle):
	case <-cctx.Done():
	}
	if cctx.Err() != nil {
		stopClients()
		close(errs)
		tb.Fatal(<-errs)
	}

	// Measured with the clients still streaming; nothing is forced.
	after, err := readProcStatus()
	if err != nil {
		tb.Fatal(err)
	}
	in := r.Buffer().Info()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := &rssResult{
		baseline:  before.rss,
		rss:       after.rss,
		hwm:       after.hwm,
		buffer:    in.Bytes,
		heapInuse: int64(ms.HeapInuse),
		memLimit:  debug.SetMemoryLimit(-1),
		gcs:       ms.NumGC - ms0.NumGC,
		elapsed:   time.Since(start),
	}
	m.streamed = streamed.Load()
	if in.LowWatermark == 0 || in.Bytes < rssBuffer-rssBuffer/64 {
		tb.Fatalf("the buffer is not full: %d bytes of %d, low watermark %d", in.Bytes, in.MaxBytes, in.LowWatermark)
	}
	stopClients()
	stopRelay()
	return m
}

// rssClient streams the relay's buffer from its oldest window to its newest,
// over and over, reading each response through a small buffer so that the
// client side adds little to the process's RSS.
type rssClient struct {
	http     *http.Client
	base     string
	br       *bufio.Reader
	streamed *atomic.Int64
}

func (c *rssClient) run(ctx context.Context) error {
	var after uint64
	for {
		next, err := c.pull(ctx, after)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		after = next
	}
}

// pull reads one response from after and returns the checkpoint to ask from
// next: its last window, or the low watermark once the client has caught up
// or fallen behind.
func (c *rssClient) pull(ctx context.Context, after uint64) (uint64, error) {
	u := c.base + "/v1/stream?wait=0s&maxBytes=" + strconv.Itoa(benchBatch) + "&checkpoint=" + url.QueryEscape(cp(after))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	low, err := strconv.ParseUint(resp.Header.Get(HeaderLowWatermark), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("status %d: %s: %v", resp.StatusCode, HeaderLowWatermark, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusGone: // evicted meanwhile
		_, err := io.Copy(io.Discard, resp.Body)
		return low, err
	default:
		b, _ := io.ReadAll(resp.Body)
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	c.br.Reset(resp.Body)
	next := after
	for {
		h, err := c.br.Peek(event.HeaderSize)
		if err == io.EOF && len(h) == 0 {
			break
		}
		if err != nil {
			return 0, err
		}
		n, err := event.FrameLen(h)
		if err != nil {
			return 0, err
		}
		if event.Kind(h[1]) == event.KindEndOfWindow {
			next = binary.BigEndian.Uint64(h[8:])
		}
		if _, err := c.br.Discard(n); err != nil {
			return 0, err
		}
		c.streamed.Add(int64(n))
	}
	c.br.Reset(nil)
	if next == after { // caught up: start again from the oldest window
		return low, nil
	}
	return next, nil
}

type procStatus struct{ rss, hwm int64 }

// readProcStatus reads VmRSS and VmHWM from /proc/self/status.
func readProcStatus() (procStatus, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return procStatus{}, err
	}
	var s procStatus
	var found int
	for line := range strings.Lines(string(b)) {
		name, val, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return procStatus{}, fmt.Errorf("/proc/self/status: unexpected %q", strings.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return procStatus{}, fmt.Errorf("/proc/self/status: %q: %v", strings.TrimSpace(line), err)
		}
		if name == "VmRSS" {
			s.rss = kb << 10
		} else {
			s.hwm = kb << 10
		}
		found++
	}
	if found != 2 {
		return procStatus{}, fmt.Errorf("/proc/self/status: no VmRSS or VmHWM")
	}
	return s, nil
}
