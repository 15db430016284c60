package bootstrap

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/secret"
	"github.com/databus-go/databus/source"
)

// Defaults applied to the zero (or nil) fields of Config.
const (
	DefaultMaxBatchWindows    = 1024
	DefaultMaxBatchBytes      = 8 * relay.MiB
	DefaultLogRetention       = 7 * 24 * time.Hour
	DefaultTombstoneRetention = 7 * 24 * time.Hour
	DefaultPurgeInterval      = time.Hour
)

// ErrConfig is wrapped by every error Config.Validate returns.
var ErrConfig = errors.New("databus: invalid bootstrap producer configuration")

// ErrRunning is returned by Run when another Run of the same Producer has
// not returned yet.
var ErrRunning = errors.New("databus: bootstrap producer is already running")

// Config is the producer's configuration, as the CLI reads it from the
// `producer:` section of the bootstrap service's YAML file. The zero value
// of every field but Relays means its default.
//
//	producer:
//	  relays: [http://relay-1:8080, http://relay-2:8080]
//	  relayToken: ${DATABUS_TOKEN}
//	  maxBatchWindows: 1024
//	  maxBatchBytes: 8MiB
//	  logRetention: 168h      # 0s keeps the log forever
//	  tombstoneRetention: 168h
//	  purgeInterval: 1h
//	  seed:
//	    tables: [shop.orders, shop.customers]
//	    rowsPerSecond: 50000
type Config struct {
	// Relays are the base URLs of relays capturing the same source; the
	// producer fails over between them. Required.
	Relays []string `yaml:"relays" json:"relays"`
	// RelayToken is the relays' bearer token (relay authToken), if they
	// need one. It is never logged.
	RelayToken secret.String `yaml:"relayToken" json:"relayToken"`
	// MaxBatchWindows and MaxBatchBytes bound one store transaction: the
	// committer applies what is queued, up to this many windows and bytes
	// (frames plus snapshot rows; at least one window, whatever its size).
	// Defaults 1024 and 8MiB.
	MaxBatchWindows int            `yaml:"maxBatchWindows" json:"maxBatchWindows"`
	MaxBatchBytes   relay.ByteSize `yaml:"maxBatchBytes" json:"maxBatchBytes"`
	// LogRetention is how long log windows are kept (by commit time); a
	// consumer further behind than that starts a new snapshot. nil means
	// the default, 7 days; 0 ("0s") keeps the log forever.
	LogRetention *time.Duration `yaml:"logRetention" json:"logRetention"`
	// TombstoneRetention is how long the snapshot keeps the tombstones of
	// deleted rows. nil means the default, 7 days; 0 keeps them forever.
	TombstoneRetention *time.Duration `yaml:"tombstoneRetention" json:"tombstoneRetention"`
	// PurgeInterval is how often Purge runs. Default 1h.
	PurgeInterval time.Duration `yaml:"purgeInterval" json:"purgeInterval"`
	// Seed configures the seeder (used only with a ChunkReader).
	Seed SeedConfig `yaml:"seed" json:"seed"`
}

// Retain returns d as a retention for Config.LogRetention and
// Config.TombstoneRetention; Retain(0) keeps forever.
func Retain(d time.Duration) *time.Duration { return &d }

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.MaxBatchWindows == 0 {
		c.MaxBatchWindows = DefaultMaxBatchWindows
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.LogRetention == nil {
		c.LogRetention = Retain(DefaultLogRetention)
	}
	if c.TombstoneRetention == nil {
		c.TombstoneRetention = Retain(DefaultTombstoneRetention)
	}
	if c.PurgeInterval == 0 {
		c.PurgeInterval = DefaultPurgeInterval
	}
	c.Seed = c.Seed.WithDefaults()
	return c
}

// Validate reports the first bad field of c (after defaults), naming it as
// YAML spells it. It does not contact the relays.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if len(c.Relays) == 0 {
		return fmt.Errorf("%w: relays is empty: the producer needs at least one relay URL", ErrConfig)
	}
	for i, r := range c.Relays {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("%w: relays[%d] %q: want http(s)://host[:port][/path]", ErrConfig, i, r)
		}
	}
	if strings.ContainsAny(string(c.RelayToken), " \t\r\n") {
		return fmt.Errorf("%w: relayToken contains white space", ErrConfig)
	}
	if c.MaxBatchWindows < 1 {
		return fmt.Errorf("%w: maxBatchWindows %d is below 1", ErrConfig, c.MaxBatchWindows)
	}
	if c.MaxBatchBytes < relay.KiB {
		return fmt.Errorf("%w: maxBatchBytes %v is below 1KiB", ErrConfig, c.MaxBatchBytes)
	}
	if *c.LogRetention < 0 {
		return fmt.Errorf("%w: logRetention %v is negative (0s keeps the log forever)", ErrConfig, *c.LogRetention)
	}
	if *c.TombstoneRetention < 0 {
		return fmt.Errorf("%w: tombstoneRetention %v is negative (0s keeps tombstones forever)", ErrConfig, *c.TombstoneRetention)
	}
	if c.PurgeInterval < time.Second {
		return fmt.Errorf("%w: purgeInterval %v is below 1s", ErrConfig, c.PurgeInterval)
	}
	if err := c.Seed.validate(); err != nil {
		return err
	}
	return nil
}

// GapError is returned by Run when no relay holds the windows after the
// store's head any more: the producer was stopped (or failing) for longer
// than the relays keep windows. Continuing would leave a hole in the log and
// a snapshot missing those changes, so the producer refuses.
type GapError struct {
	// Head is the store's head: the last window it holds.
	Head uint64
	// Relay is the relays' answer: the oldest checkpoint they can serve.
	Relay *client.SCNNotHeldError
}

func (e *GapError) Error() string {
	return fmt.Sprintf("databus: bootstrap store head is scn %d, but the relays only serve checkpoints from scn %d: "+
		"the store cannot continue without a gap in its log; re-create the store (a new file or database) and seed the tables again (%v)",
		e.Head, e.Relay.LowWatermark, e.Relay)
}

func (e *GapError) Unwrap() error { return e.Relay }

// Producer keeps a bootstrap store up to date with the relays' stream and
// seeds it with the tables' existing rows. Create it with NewProducer and
// start it with Run. Its methods are safe for concurrent use.
type Producer struct {
	cfg    Config // with defaults
	st     store.Store
	chunks source.ChunkReader // nil: no seeding
	log    *slog.Logger
	m      *metrics
	tr     *http.Transport
	httpc  *http.Client
	// nonce is this Producer's part of its chunk marks (see package doc).
	nonce string

	running atomic.Bool
	// head is the store's head as this producer last committed or read it.
	head atomic.Uint64
	// metaCh carries batches without windows (a new seed run's record) to
	// the committer of the current session.
	metaCh chan *metaReq
	// wake tells the seeder that a run was queued.
	wake chan struct{}
	// wmTable is the watermark table's logical name (see watermarkTable).
	wmTable atomic.Pointer[string]

	// mu guards the fields below. Lock order: mu is never held while
	// waiting on a channel or calling the store, the relays or the source.
	mu sync.Mutex
	cl *client.Client // the current session's client; nil between sessions
	// wm tracks the chunks of the seeder (see seed.go).
	wm watermarks
	// Seeder state (see seed.go).
	queue  []*seedRun          // runs waiting, oldest first
	runs   map[string]*seedRun // by table: every run known (queued, running or finished)
	chunkN uint64              // last chunk sequence number drawn
}

// NewProducer checks cfg and returns a Producer that writes to st. chunks
// reads the source's existing rows for seeding; nil disables seeding (Seed
// then fails). log may be nil (no logging); reg may be nil (no metrics
// registered). The Producer does not close st or chunks.
func NewProducer(cfg Config, st store.Store, chunks source.ChunkReader, log *slog.Logger, reg prometheus.Registerer) (*Producer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if st == nil {
		return nil, errors.New("databus: bootstrap producer: nil store")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.WithDefaults()
	cfg.Relays = append([]string(nil), cfg.Relays...)
	for i, r := range cfg.Relays {
		cfg.Relays[i] = strings.TrimRight(r, "/")
	}
	if cfg.Seed.WatermarkTable == "" && len(cfg.Seed.Tables) > 0 {
		db, _, _ := strings.Cut(cfg.Seed.Tables[0], ".")
		cfg.Seed.WatermarkTable = db + "." + source.WatermarkTableName
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	var nonce [4]byte
	if _, err := io.ReadFull(rand.Reader, nonce[:]); err != nil {
		return nil, fmt.Errorf("databus: bootstrap producer: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	var rt http.RoundTripper = tr
	if cfg.RelayToken != "" {
		rt = &bearer{base: tr, token: string(cfg.RelayToken)}
	}
	p := &Producer{
		cfg:    cfg,
		st:     st,
		chunks: chunks,
		log:    log,
		m:      m,
		tr:     tr,
		httpc:  &http.Client{Transport: rt},
		nonce:  hex.EncodeToString(nonce[:]),
		metaCh: make(chan *metaReq),
		wake:   make(chan struct{}, 1),
		runs:   map[string]*seedRun{},
	}
	if cfg.Seed.WatermarkTable != "" {
		p.setWatermarkTable(cfg.Seed.WatermarkTable)
	}
	p.wm.pending = map[string]*chunk{}
	p.wm.sealed = map[*chunk]struct{}{}
	return p, nil
}

// bearer adds the relays' token to every request.
type bearer struct {
	base  http.RoundTripper
	token string
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// Back-off between two sessions of the stream after a failure.
const (
	minRestartBackoff = 100 * time.Millisecond
	maxRestartBackoff = 30 * time.Second
)

// Run keeps the store up to date until ctx ends or an error no restart can
// fix, and returns after every goroutine it started has ended.
//
// It resumes after the store's head; on an empty store, after the relays'
// low watermark (the seeder covers older rows). A failed Apply (including
// store.ErrConflict), a failing relay or a handler failure restarts the
// stream from the store's head after a back-off (100ms doubling to 30s),
// never skipping a window. Run returns ctx.Err() when ctx ends, or:
//   - *GapError when the relays no longer hold the windows after the head;
//   - *client.RelayError when a relay refuses the producer's requests
//     (a bad token, for example): retrying cannot help;
//   - ErrRunning when another Run of this Producer has not returned.
//
// Run may be called again after it returns.
func (p *Producer) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer p.running.Store(false)
	defer p.tr.CloseIdleConnections()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { p.purgeLoop(ctx) })
	if p.chunks != nil {
		wg.Go(func() { p.seedLoop(ctx) })
	}
	err := p.streamLoop(ctx)
	cancel()
	wg.Wait()
	return err
}

// streamLoop runs sessions of the stream until ctx ends or one fails in a
// way no restart can fix.
func (p *Producer) streamLoop(ctx context.Context) error {
	failures := 0
	for {
		progressed, err := p.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var (
			nh *client.SCNNotHeldError
			re *client.RelayError
		)
		switch {
		case errors.As(err, &nh):
			st, serr := p.st.State(ctx)
			if serr == nil && !st.Empty {
				gerr := &GapError{Head: st.Head, Relay: nh}
				p.log.Error("databus: bootstrap producer stopped", "err", gerr)
				return gerr
			}
			// Nothing stored yet: the relays moved on between reading their
			// low watermark and the first pull. Start again from the new one.
		case errors.As(err, &re):
			p.log.Error("databus: bootstrap producer stopped: a relay refused its requests", "err", err)
			return err
		}
		if progressed {
			failures = 0
		}
		failures++
		d := restartBackoff(failures)
		p.m.restarts.Inc()
		p.log.Warn("databus: bootstrap producer restarting from the store's head", "err", err, "backoff", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// restartBackoff returns the wait after n consecutive failed sessions
// (n >= 1): exponential, capped, with jitter in its upper half so that the
// producers of a shared store do not collide again in step.
func restartBackoff(n int) time.Duration {
	d := minRestartBackoff
	for i := 1; i < n && d < maxRestartBackoff; i++ {
		d *= 2
	}
	d = min(d, maxRestartBackoff)
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// session is one run of the relay client from the store's head, with its
// committer. It ends with the first failure of either.
type session struct {
	p     *Producer
	after uint64 // the store's head when the session started
	cl    *client.Client
	winCh chan *pendingWindow
	// known holds the schema versions the store holds (by the committer
	// only).
	known map[schemaKey]bool
	// applied is set once a batch with a window has been committed.
	applied atomic.Bool
}

type schemaKey struct {
	id      uint32
	version uint16
}

// session runs the stream once. progressed reports whether it committed
// any window before it ended.
func (p *Producer) session(ctx context.Context) (progressed bool, err error) {
	st, err := p.st.State(ctx)
	if err != nil {
		return false, fmt.Errorf("databus: reading the bootstrap store's state: %w", err)
	}
	after := st.Head
	if st.Empty {
		after, err = p.relayLowWatermark(ctx)
		if err != nil {
			return false, err
		}
		p.log.Info("databus: bootstrap store is empty: starting after the relays' low watermark", "scn", after)
	}
	p.head.Store(after)
	p.m.head.Set(float64(after))
	stored, err := p.st.Schemas(ctx)
	if err != nil {
		return false, fmt.Errorf("databus: reading the bootstrap store's schemas: %w", err)
	}
	s := &session{
		p:     p,
		after: after,
		winCh: make(chan *pendingWindow, p.cfg.MaxBatchWindows),
		known: make(map[schemaKey]bool, len(stored)),
	}
	for _, t := range stored {
		s.known[schemaKey{t.ID, t.Version}] = true
	}
	maxBytes := min(max(int(p.cfg.MaxBatchBytes), 1<<20), 64<<20)
	s.cl, err = client.New(p.cfg.Relays, &handler{s: s},
		client.WithStart(checkpoint.At(after)),
		client.WithCheckpointStore(new(client.MemoryStore)),
		client.WithEmptyWindows(),
		client.WithName("bootstrap-producer"),
		client.WithLogger(p.log),
		client.WithHTTPClient(p.httpc),
		client.WithCallbackTimeout(0), // OnWindow blocks on a full queue: that is back-pressure, not a failure
		client.WithMaxBytes(maxBytes),
	)
	if err != nil {
		return false, err
	}
	p.log.Info("databus: bootstrap producer streaming", "after", after, "relays", p.cfg.Relays)

	sctx, cancel := context.WithCancelCause(ctx)
	p.mu.Lock()
	p.cl = s.cl
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.commit(sctx); err != nil {
			cancel(err)
		}
	})
	err = s.cl.Run(sctx)
	cancel(err)
	wg.Wait()

	p.mu.Lock()
	p.cl = nil
	// The next session replays the stream from the store's head: the marks
	// this one saw may not come again, so its chunks are void.
	voided := p.wm.voidAllLocked()
	p.mu.Unlock()
	if voided > 0 {
		p.m.seedRedos.Add(float64(voided))
	}
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) && ctx.Err() == nil {
		err = cause
	}
	return s.applied.Load(), err
}

// relayLowWatermark asks the relays, in turn, for the oldest checkpoint
// they can serve (GET /v1/buffer).
func (p *Producer) relayLowWatermark(ctx context.Context) (uint64, error) {
	var errs []error
	for _, r := range p.cfg.Relays {
		scn, err := p.bufferLowWatermark(ctx, r)
		if err == nil {
			return scn, nil
		}
		errs = append(errs, err)
	}
	return 0, fmt.Errorf("databus: no relay told its low watermark: %w", errors.Join(errs...))
}

func (p *Producer) bufferLowWatermark(ctx context.Context, relayURL string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, relayURL+"/v1/buffer", nil)
	if err != nil {
		return 0, err
	}
	resp, err := p.httpc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("relay %s: %w", relayURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("relay %s: reading /v1/buffer: %w", relayURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("relay %s: /v1/buffer answered %s: %s", relayURL, resp.Status, strings.TrimSpace(string(body)))
	}
	var b struct {
		LowWatermark *uint64 `json:"lowWatermark"`
	}
	if err := json.Unmarshal(body, &b); err != nil || b.LowWatermark == nil {
		return 0, fmt.Errorf("relay %s: /v1/buffer has no lowWatermark: %q", relayURL, body)
	}
	return *b.LowWatermark, nil
}

// handler is the session's client handler: it turns each window into a
// pendingWindow (in stream order, which the watermark tracking needs) and
// queues it for the committer.
type handler struct{ s *session }

// OnWindow never fails but for a corrupt window (the client then delivers
// it again, and gives up after its retries) or a stopping session.
func (h *handler) OnWindow(ctx context.Context, w *client.Window) error {
	p := h.s.p
	var marks map[int]string
	if wm := p.watermarkTable(); wm != "" {
		for i, e := range w.Events {
			if e.Source != wm || e.Op == event.OpDelete {
				continue
			}
			mark, err := markOf(e)
			if err != nil {
				p.log.Warn("databus: bootstrap producer: unreadable watermark row", "scn", w.SCN, "err", err)
				continue
			}
			if marks == nil {
				marks = map[int]string{}
			}
			marks[i] = mark
		}
	}
	p.mu.Lock()
	pw, err := p.wm.convertLocked(w.SCN, w.Frames(), marks)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case h.s.winCh <- pw:
		return nil
	case <-ctx.Done():
		// A chunk sealed into pw is voided when the session ends.
		return ctx.Err()
	}
}

// OnRollback has nothing to undo: a window reaches the store only through
// the committer, and OnWindow fails only before queueing it.
func (h *handler) OnRollback(context.Context, uint64, error) {}

// markOf reads the mark column of a watermark row.
func markOf(e *client.Event) (string, error) {
	row, err := e.Row()
	if err != nil {
		return "", err
	}
	switch v := row["mark"].(type) {
	case string:
		return v, nil
	case map[string]any: // a nullable column, decoded as its union branch
		if s, ok := v["string"].(string); ok {
			return s, nil
		}
	}
	return "", fmt.Errorf("databus: watermark row of %s has no string column mark", e.Source)
}

// pendingWindow is a window converted for the store, on its way to the
// committer.
type pendingWindow struct {
	w      store.Window
	events int // data events, seeded rows included
	bytes  int // frames and snapshot row frames
	// seeds is the progress of the chunks sealed into this window.
	seeds  []store.SeedProgress
	sealed []*chunk
}

// convertWindow turns the frames of one relay window into the store's
// form: the log entry (the frames, verbatim) and the snapshot changes in
// stream order. It does not touch the watermark state (see
// watermarks.convertLocked, which wraps it).
//
// An insert without a before-image is already what the snapshot stores: its
// frame is reused, aliasing frames. Other inserts and updates are encoded
// again as inserts without the before-image.
func convertWindow(scn uint64, frames []byte, onData func(i int, e *event.Event), onChange func(e *event.Event, sc *event.SchemaChange)) (*pendingWindow, event.Event, int, error) {
	pw := &pendingWindow{w: store.Window{SCN: scn, Frames: frames}}
	var (
		eow    event.Event
		eowOff = -1
		enc    []byte // re-encoded frames, sliced into rows at the end
		encAt  []int  // for rows with a frame in enc: row index, then offset
	)
	data := 0
	for off := 0; off < len(frames); {
		f, n, err := event.Decode(frames[off:])
		if err != nil {
			return nil, eow, 0, fmt.Errorf("databus: bootstrap producer: window scn %d: %w", scn, err)
		}
		if f.SCN != scn {
			return nil, eow, 0, fmt.Errorf("databus: bootstrap producer: frame of scn %d inside window scn %d", f.SCN, scn)
		}
		switch f.Kind {
		case event.KindData:
			row := store.Row{Source: f.Source, Key: f.Key, SCN: scn}
			switch {
			case f.Op == event.OpDelete:
				row.Op = store.RowDelete
			case f.Op == event.OpInsert && !f.HasBefore:
				row.Op, row.Frame = store.RowUpsert, frames[off:off+n:off+n]
			default:
				ins := event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: f.Timestamp,
					Source: f.Source, SchemaVersion: f.SchemaVersion, Key: f.Key, Payload: f.Payload}
				encAt = append(encAt, len(pw.w.Rows), len(enc))
				if enc, err = event.AppendFrame(enc, &ins); err != nil {
					return nil, eow, 0, err
				}
				row.Op = store.RowUpsert
			}
			pw.w.Rows = append(pw.w.Rows, row)
			if onData != nil {
				onData(data, &f)
			}
			data++
		case event.KindSchemaChange:
			sc, err := f.SchemaChange()
			if err != nil {
				return nil, eow, 0, fmt.Errorf("databus: bootstrap producer: window scn %d: %w", scn, err)
			}
			if sc.Truncate || sc.Drop {
				pw.w.Rows = append(pw.w.Rows, store.Row{Source: f.Source, SCN: scn, Op: store.RowTruncate})
			}
			if onChange != nil {
				onChange(&f, &sc)
			}
		case event.KindEndOfWindow:
			if off+n != len(frames) {
				return nil, eow, 0, fmt.Errorf("databus: bootstrap producer: window scn %d has frames after its end-of-window frame", scn)
			}
			eow, eowOff = f, off
		}
		off += n
	}
	if eowOff < 0 {
		return nil, eow, 0, fmt.Errorf("databus: bootstrap producer: window scn %d has no end-of-window frame", scn)
	}
	for i := 0; i < len(encAt); i += 2 {
		start := encAt[i+1]
		end := len(enc)
		if i+3 < len(encAt) {
			end = encAt[i+3]
		}
		pw.w.Rows[encAt[i]].Frame = enc[start:end:end]
	}
	pw.w.Timestamp = eow.Timestamp
	pw.events = data
	pw.bytes = len(frames) + len(enc)
	return pw, eow, eowOff, nil
}

// metaReq asks the committer for a batch of seed records alone.
type metaReq struct {
	seeds []store.SeedProgress
	done  chan error // buffered: the committer never blocks on it
}

// commit is the session's committer: it applies what is queued, as one
// batch, until ctx ends (nil) or an Apply fails (its error).
func (s *session) commit(ctx context.Context) error {
	p := s.p
	maxBytes := int(p.cfg.MaxBatchBytes)
	head := s.after
	// carry is a window that did not fit the previous batch: it starts the
	// next one.
	var carry *pendingWindow
	for {
		var (
			pws   []*pendingWindow
			metas []*metaReq
			bytes int
		)
		if carry != nil {
			pws, bytes, carry = append(pws, carry), carry.bytes, nil
		} else {
			select {
			case pw := <-s.winCh:
				pws, bytes = append(pws, pw), pw.bytes
			case mr := <-p.metaCh:
				metas = append(metas, mr)
			case <-ctx.Done():
				return nil
			}
		}
	drain:
		for len(pws) < p.cfg.MaxBatchWindows && bytes < maxBytes {
			select {
			case pw := <-s.winCh:
				if len(pws) > 0 && bytes+pw.bytes > maxBytes {
					carry = pw
					break drain
				}
				pws, bytes = append(pws, pw), bytes+pw.bytes
			default:
				break drain
			}
		}
		b := store.Batch{After: head}
		if err := s.apply(ctx, &b, pws, metas, &head); err != nil {
			return err
		}
	}
}

// apply commits one batch of windows and seed records and publishes what
// it made durable.
func (s *session) apply(ctx context.Context, b *store.Batch, pws []*pendingWindow, metas []*metaReq, head *uint64) error {
	p := s.p
	events := 0
	for _, pw := range pws {
		b.Windows = append(b.Windows, pw.w)
		b.Seeds = append(b.Seeds, pw.seeds...)
		events += pw.events
	}
	for _, mr := range metas {
		b.Seeds = append(b.Seeds, mr.seeds...)
	}
	var newKeys []schemaKey
	for _, t := range s.cl.Schemas() {
		k := schemaKey{t.ID, t.Version}
		if !s.known[k] {
			b.Schemas = append(b.Schemas, t)
			newKeys = append(newKeys, k)
		}
	}
	start := time.Now()
	err := p.st.Apply(ctx, b)
	p.m.batchSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		p.m.applyErrors.Inc()
		for _, mr := range metas {
			mr.done <- err
		}
		if ctx.Err() != nil {
			return nil // stopping: the batch is read again from the relays next time
		}
		return fmt.Errorf("databus: bootstrap store apply of %d windows after scn %d: %w", len(b.Windows), b.After, err)
	}
	for _, k := range newKeys {
		s.known[k] = true
	}
	if n := len(b.Windows); n > 0 {
		*head = b.Windows[n-1].SCN
		s.applied.Store(true)
	}
	p.head.Store(*head)
	p.m.batches.Inc()
	p.m.windows.Add(float64(len(b.Windows)))
	p.m.events.Add(float64(events))
	p.m.head.Set(float64(*head))
	if mx := s.cl.Stats().RelayMaxSCN; mx > *head {
		p.m.lag.Set(float64(mx - *head))
	} else {
		p.m.lag.Set(0)
	}
	for _, mr := range metas {
		mr.done <- nil
	}
	if len(b.Seeds) > 0 || len(pws) > 0 {
		p.committed(pws)
	}
	return nil
}

// purgeLoop purges the store every PurgeInterval, first at once.
func (p *Producer) purgeLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.PurgeInterval)
	defer t.Stop()
	for {
		p.purge(ctx)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func (p *Producer) purge(ctx context.Context) {
	now := time.Now()
	var pol store.PurgePolicy
	if d := *p.cfg.LogRetention; d > 0 {
		pol.LogBefore = now.Add(-d)
	}
	if d := *p.cfg.TombstoneRetention; d > 0 {
		pol.TombstonesBefore = now.Add(-d)
	}
	if pol.LogBefore.IsZero() && pol.TombstonesBefore.IsZero() {
		return
	}
	start := time.Now()
	res, err := p.st.Purge(ctx, pol)
	if err != nil {
		if ctx.Err() == nil {
			p.m.purgeErrors.Inc()
			p.log.Error("databus: bootstrap store purge failed", "err", err)
		}
		return
	}
	p.m.purges.Inc()
	p.m.purgedWindows.Add(float64(res.Windows))
	p.m.purgedTombstones.Add(float64(res.Tombstones))
	p.m.lowWatermark.Set(float64(res.LowWatermark))
	if res.Windows > 0 || res.Tombstones > 0 {
		p.log.Info("databus: bootstrap store purged", "windows", res.Windows, "tombstones", res.Tombstones,
			"lowWatermark", res.LowWatermark, "took", time.Since(start))
	}
}

// Head returns the store's head as the producer last committed or read it
// (0 before Run has read the store).
func (p *Producer) Head() uint64 { return p.head.Load() }
