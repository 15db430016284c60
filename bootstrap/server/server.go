package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/internal/httpapi"
)

// Timeouts of the HTTP server.
const (
	// writeSlack is how long one write of a response may take: the
	// deadline moves with each chunk written, so a page takes as long as it
	// needs while the client reads, and a stalled client cannot pin a
	// connection and its page buffer for more than this.
	writeSlack = time.Minute
	// storeTimeout bounds the store calls of /healthz and of a scrape.
	storeTimeout = 5 * time.Second
)

// ErrRunTwice is returned by a second call of Server.Run.
var ErrRunTwice = errors.New("databus: bootstrap Server.Run called twice")

// Errors a Seeder returns (wrapped) so that POST /v1/seed answers with the
// right status; any other error is a 503 unavailable.
var (
	// ErrUnknownTable: the table is not one the seeder can copy (400
	// unknown_source).
	ErrUnknownTable = errors.New("databus: unknown table")
	// ErrSeedRunning: a seed run of the table is already queued or in
	// progress (409 seed_running).
	ErrSeedRunning = errors.New("databus: a seed of this table is already running")
	// ErrSeedingUnavailable: the seeder cannot seed at all, for example
	// because its source has no chunk reader (501 seeding_not_configured).
	ErrSeedingUnavailable = errors.New("databus: seeding is not available")
)

// Seeder starts and reports seed runs (see "Seeding" in docs/BOOTSTRAP.md).
// The bootstrap producer implements it through a small adapter (its
// SeedStatus converts to this package's, field for field); a server without
// one answers POST /v1/seed with 501 seeding_not_configured and reports in
// /v1/info only the seed progress recorded in the store. Implementations
// must be safe for concurrent use.
type Seeder interface {
	// Seed starts a new seed run of table (db.table) and returns its id
	// without waiting for the copy: the run goes on in the seeder's own
	// goroutines, and ctx bounds only the start. It returns an error
	// wrapping ErrUnknownTable, ErrSeedRunning or ErrSeedingUnavailable
	// when those apply.
	Seed(ctx context.Context, table string) (run string, err error)
	// SeedStatus returns the live figures of the latest seed run of every
	// table the seeder knows. It must not block on I/O: /v1/info and the
	// status page call it on every request.
	SeedStatus() []SeedStatus
}

// SeedStatus is the live progress of one seed run. Its fields are those of
// the producer's bootstrap.SeedStatus, so that one converts to the other.
type SeedStatus struct {
	Table string // db.table
	Run   string
	Rows  uint64 // rows copied so far
	Done  bool
	// Running while the seeder works on the run; Queued while it waits.
	Running bool
	Queued  bool
	// Estimate is the estimated number of rows of the table (0 when
	// unknown), RowsPerSecond the copy rate and ETA the estimated time
	// left (0 when unknown or done).
	Estimate      uint64
	RowsPerSecond float64
	ETA           time.Duration
	Started       time.Time
	Updated       time.Time
	// Error is the last problem the run met ("" when none).
	Error string
}

// Option configures a Server beyond its Config.
type Option func(*options)

type options struct {
	seeder Seeder
}

// WithSeeder lets the server start seed runs (POST /v1/seed) and report
// their live progress (/v1/info).
func WithSeeder(s Seeder) Option { return func(o *options) { o.seeder = s } }

// Server serves a bootstrap store over HTTP (docs/BOOTSTRAP.md). It only
// reads the store, except that POST /v1/seed asks the Seeder to start a
// run. It is safe for concurrent use; it does not own the store (the caller
// closes it after Run returns).
type Server struct {
	cfg     Config
	st      store.Store
	seeder  Seeder // nil when seeding is not configured
	log     *slog.Logger
	m       *metrics
	handler http.Handler

	started atomic.Bool
	ready   chan struct{} // closed once Run listens; addr is set before
	addr    string
}

// New builds a server over st: it validates cfg and registers the server's
// metrics with reg (a new registry when nil; /metrics serves reg when it is
// also a prometheus.Gatherer, else prometheus.DefaultGatherer). It does not
// touch the store or listen: Run listens, and each request reads the store.
func New(cfg Config, st store.Store, log *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if st == nil {
		return nil, errors.New("databus: bootstrap server.New: nil store")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
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
	s := &Server{cfg: cfg, st: st, seeder: o.seeder, log: log, ready: make(chan struct{})}
	var err error
	if s.m, err = newMetrics(reg, st); err != nil {
		return nil, fmt.Errorf("databus: bootstrap server metrics: %w", err)
	}
	s.handler = s.routes(gatherer)
	return s, nil
}

// Handler returns the server's HTTP handler (the API, /healthz, /metrics
// and the status page). Run serves it; tests and embedders may serve it
// themselves.
func (s *Server) Handler() http.Handler { return s.handler }

// Ready returns a channel closed once Run listens (Addr is then set).
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the address Run listens on, or "" before it listens.
func (s *Server) Addr() string {
	select {
	case <-s.ready:
		return s.addr
	default:
		return ""
	}
}

// Run listens on cfg.Listen and serves until ctx is done, then shuts the
// HTTP server down gracefully: in-flight responses (each one page, bounded
// by maxBytes) get shutdownTimeout to finish before their connections are
// closed. A server runs once. Run returns nil after ctx is done, or the
// error that kept it from serving.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrRunTwice
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("databus: bootstrap server: listen: %w", err)
	}
	s.addr = ln.Addr().String()
	close(s.ready)
	s.log.Info("bootstrap server listening", "addr", s.addr, "auth", s.cfg.AuthToken != "", "seeding", s.seeder != nil)

	if err := httpapi.Serve(ctx, ln, s.handler, s.log, nil); err != nil {
		return fmt.Errorf("databus: bootstrap server: serve: %w", err)
	}
	s.log.Info("bootstrap server stopped")
	return nil
}
