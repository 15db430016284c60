package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/internal/httpapi"
	"github.com/databus-go/databus/relay/buffer"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// Timeouts of the HTTP server and of shutdown.
const (
	// writeSlack is added to a stream request's wait to bound how long a
	// response may take to write, so a stalled client cannot pin a
	// connection (and the windows it is being sent) forever.
	writeSlack = time.Minute
	// memoryHeadroom is added to buffer.maxBytes for the soft memory limit.
	memoryHeadroom = 32 << 20
)

// ErrRunTwice is returned by a second call of Relay.Run.
var ErrRunTwice = errors.New("databus: Relay.Run called twice")

// Relay captures windows from one physical source into an event buffer and
// serves them over HTTP. See the package documentation.
type Relay struct {
	cfg      Config
	src      source.Source
	log      *slog.Logger
	buf      *buffer.Buffer
	reg      *schema.Registry
	m        *metrics
	gatherer prometheus.Gatherer
	clients  *clients
	handler  http.Handler
	now      func() time.Time // wall clock; tests replace it before Run

	// start is the position read from the state directory at New; read-only.
	start position
	// spillDir holds the files of large windows (see spill.go); New
	// empties it.
	spillDir string

	started atomic.Bool
	ready   chan struct{} // closed once Run listens; addr is set before
	open    chan struct{} // closed once the source is open (opened is set before)
	addr    string
	closing chan struct{} // closed when Run starts shutting down

	// mu guards the capture health that /healthz reports.
	mu          sync.Mutex
	opened      bool  // src.Open succeeded
	captureErr  error // last capture error, nil once a window is captured again
	stopped     bool  // captureErr is permanent: capture has stopped for good
	recapturing bool  // after a restart, the source has not yet reached start.MaxSCN

	// stateMu serialises writes of position.json and calls of src.Release.
	// Lock order: stateMu, then the buffer's lock (through Info); never mu.
	stateMu   sync.Mutex
	persisted position // content of position.json
	released  uint64   // SCN last released to the source

	// schemaMu serialises registrations and writes of schemas.json.
	schemaMu sync.Mutex
}

// New builds a relay over src: it validates cfg, creates the state
// directory, reads the persisted position and schemas, and registers its
// metrics with reg (a new registry when nil; /metrics serves reg when it is
// also a prometheus.Gatherer, else prometheus.DefaultGatherer). It neither
// listens nor touches src: Run does.
func New(cfg Config, src source.Source, log *slog.Logger, reg prometheus.Registerer) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if src == nil {
		return nil, errors.New("databus: relay.New: nil source")
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	gatherer, ok := reg.(prometheus.Gatherer)
	if !ok {
		gatherer = prometheus.DefaultGatherer
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: stateDir: %v", ErrState, err)
	}
	pos, _, err := readPosition(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	tables, err := readSchemas(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	spillDir, err := resetSpillDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	r := &Relay{
		cfg:       cfg,
		src:       src,
		log:       log,
		buf:       buffer.New(int64(cfg.Buffer.MaxBytes)),
		reg:       schema.NewRegistry(),
		gatherer:  gatherer,
		now:       time.Now,
		start:     pos,
		spillDir:  spillDir,
		persisted: pos,
		ready:     make(chan struct{}),
		open:      make(chan struct{}),
		closing:   make(chan struct{}),
	}
	for _, t := range tables {
		if _, err := r.reg.Put(t); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrState, schemasFile, err)
		}
	}
	startPos, err := marshalPosition(pos.LowWatermark)
	if err != nil {
		return nil, err
	}
	if pos.LowWatermark.SCN == 0 && len(pos.LowWatermark.Data) == 0 {
		startPos = nil
	}
	r.buf.SetStart(pos.LowWatermark.SCN, startPos)
	r.buf.SetSpillBounds(int64(cfg.Buffer.MaxSpillBytes), maxSpilledWindows)
	r.recapturing = pos.MaxSCN > pos.LowWatermark.SCN
	// A source that exposes its own metrics (slot lag, binlog position, ...)
	// is registered with the relay's, so one scrape shows both.
	if c, ok := src.(prometheus.Collector); ok {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("databus: relay: source metrics: %w", err)
		}
	}
	if r.m, err = newMetrics(reg, r.buf); err != nil {
		return nil, fmt.Errorf("databus: relay metrics: %w", err)
	}
	r.clients = newClients(r.m)
	r.handler = r.routes()
	return r, nil
}

// Handler returns the relay's HTTP handler (the API, /healthz, /metrics and
// the status page). Run serves it; tests may serve it themselves.
func (r *Relay) Handler() http.Handler { return r.handler }

// Buffer returns the relay's event buffer, for tests and benchmarks. Only
// the relay may append to it.
func (r *Relay) Buffer() *buffer.Buffer { return r.buf }

// Registry returns the relay's schema registry.
func (r *Relay) Registry() *schema.Registry { return r.reg }

// Ready returns a channel closed once the source is open and its tables
// are registered: from then on /healthz answers 200 while capture is
// healthy, and /v1/stream checks source names instead of answering 503.
// It is never closed when Run stops before the source opens.
func (r *Relay) Ready() <-chan struct{} { return r.open }

// Addr returns the address Run listens on, or "" before it listens.
func (r *Relay) Addr() string {
	select {
	case <-r.ready:
		return r.addr
	default:
		return ""
	}
}

// Run listens on cfg.Listen, captures from the source and serves HTTP until
// ctx is done, then shuts the HTTP server down gracefully (in-flight long
// polls get 503 unavailable), waits for every goroutine it started, writes
// position.json a last time and closes the source. A relay runs once.
//
// Run returns nil after ctx is done, or the error that kept it from
// serving (the listener). Capture errors do not end Run: they are retried,
// and a permanent one (a window larger than the buffer) stops capture but
// not serving; /healthz reports both.
func (r *Relay) Run(ctx context.Context) (err error) {
	if !r.started.CompareAndSwap(false, true) {
		return ErrRunTwice
	}
	defer func() {
		if cerr := r.src.Close(); cerr != nil {
			r.log.Warn("closing the source", "err", cerr)
		}
	}()
	if os.Getenv("GOMEMLIMIT") == "" {
		prev := debug.SetMemoryLimit(int64(r.cfg.Buffer.MaxBytes) + memoryHeadroom)
		defer debug.SetMemoryLimit(prev)
	}
	ln, err := net.Listen("tcp", r.cfg.Listen)
	if err != nil {
		return fmt.Errorf("databus: relay: listen: %w", err)
	}
	r.addr = ln.Addr().String()
	close(r.ready)
	r.log.Info("relay listening", "addr", r.addr, "bufferMaxBytes", r.cfg.Buffer.MaxBytes.String(),
		"lowWatermark", r.start.LowWatermark.SCN, "maxScn", r.start.MaxSCN)

	capCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { r.capture(capCtx, &wg) })
	wg.Go(func() { r.housekeeping(capCtx) })
	// Before the HTTP shutdown: stop capture, and end the long polls
	// (they answer 503 unavailable).
	serveErr := httpapi.Serve(ctx, ln, r.handler, r.log, func() {
		cancel()
		close(r.closing)
		r.buf.Close()
	})
	wg.Wait()
	r.stateMu.Lock()
	r.persistLocked()
	r.stateMu.Unlock()
	// The spilled windows' files go; the buffer still reads them through
	// the files it holds open.
	if _, err := resetSpillDir(r.cfg.StateDir); err != nil {
		r.log.Warn("removing spilled windows", "err", err)
	}
	if serveErr != nil {
		return fmt.Errorf("databus: relay: serve: %w", serveErr)
	}
	r.log.Info("relay stopped")
	return nil
}

// housekeeping drops idle clients' series.
func (r *Relay) housekeeping(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.clients.expire(r.now())
		}
	}
}

// health is what /healthz reports.
type health struct {
	Status   string `json:"status"` // ok, starting or error
	MaxSCN   uint64 `json:"maxScn"`
	Error    string `json:"error,omitempty"`
	Retrying bool   `json:"retrying,omitempty"`
}

func (r *Relay) isOpened() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opened
}

func (r *Relay) health() (h health, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h = health{Status: "ok", MaxSCN: r.buf.LastSCN()}
	switch {
	case r.captureErr != nil:
		h.Status, h.Error, h.Retrying = "error", r.captureErr.Error(), !r.stopped
	case !r.opened:
		h.Status = "starting"
	}
	return h, h.Status == "ok"
}
