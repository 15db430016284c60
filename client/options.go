package client

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/filter"
)

// Option configures a Client. Options are validated by New, which reports
// the first bad one.
type Option func(*config) error

// config is what the options set. Defaults are in defaultConfig.
type config struct {
	store         CheckpointStore
	start         checkpoint.Checkpoint
	sources       []string
	partition     string // canonical form, "" for none
	maxBytes      int
	wait          time.Duration
	retryAttempts int
	retryMin      time.Duration
	retryMax      time.Duration
	relayAttempts int // 0: retry forever
	relayMin      time.Duration
	relayMax      time.Duration
	callTimeout   time.Duration // 0: none
	reqTimeout    time.Duration
	every         int
	logger        *slog.Logger
	httpClient    *http.Client // nil: the client's own
	name          string
	bufferWindows int
	emptyWindows  bool
	bootstraps    []string // bootstrap server base URLs, no trailing slash
}

// Protocol bounds (PROTOCOL.md), checked here so that a bad value fails in
// New rather than at the first request.
const (
	minMaxBytes = 1024
	maxMaxBytes = 64 << 20
	maxWait     = 60 * time.Second
)

func defaultConfig() config {
	return config{
		start:         checkpoint.Start(),
		maxBytes:      1 << 20,
		wait:          5 * time.Second,
		retryAttempts: 5,
		retryMin:      100 * time.Millisecond,
		retryMax:      10 * time.Second,
		relayMin:      100 * time.Millisecond,
		relayMax:      10 * time.Second,
		callTimeout:   time.Minute,
		reqTimeout:    30 * time.Second,
		every:         1,
		logger:        slog.New(slog.DiscardHandler),
		bufferWindows: 64,
	}
}

// WithCheckpointStore sets where the checkpoint is loaded from at the start
// of Run and saved to after windows. The default is a new MemoryStore.
func WithCheckpointStore(s CheckpointStore) Option {
	return func(c *config) error {
		if s == nil {
			return fmt.Errorf("WithCheckpointStore: nil store")
		}
		c.store = s
		return nil
	}
}

// WithStart sets the checkpoint to start from when the store holds none.
// The default is checkpoint.Start(): the oldest window the relay holds.
// checkpoint.FullHistory() asks for the whole history from the bootstrap
// servers (WithBootstrap, which New then requires): a snapshot, the log
// after it, then the relays.
func WithStart(cp checkpoint.Checkpoint) Option {
	return func(c *config) error {
		if err := cp.Validate(); err != nil {
			return fmt.Errorf("WithStart: %w", err)
		}
		c.start = cp
		return nil
	}
}

// WithSources limits the stream to the named logical sources (db.table).
// The relay filters; windows still arrive for every transaction, possibly
// empty. The default is every source.
func WithSources(names ...string) Option {
	return func(c *config) error {
		for _, n := range names {
			if n == "" || strings.Contains(n, ",") {
				return fmt.Errorf("WithSources: bad source name %q", n)
			}
		}
		c.sources = append([]string(nil), names...)
		return nil
	}
}

// WithPartition limits the stream to a key partition, in the syntax of
// package filter ("mod:3/8", "range:0-1000"). The relay filters.
func WithPartition(p string) Option {
	return func(c *config) error {
		part, err := filter.ParsePartition(p)
		if err != nil {
			return fmt.Errorf("WithPartition: %w", err)
		}
		c.partition = part.String()
		return nil
	}
}

// WithMaxBytes sets the byte budget of one relay response, 1024..64 MiB
// (default 1 MiB). A window larger than that still arrives, alone.
func WithMaxBytes(n int) Option {
	return func(c *config) error {
		if n < minMaxBytes || n > maxMaxBytes {
			return fmt.Errorf("WithMaxBytes: %d is outside [%d, %d]", n, minMaxBytes, maxMaxBytes)
		}
		c.maxBytes = n
		return nil
	}
}

// WithWait sets how long the relay holds a request open when it has no new
// window (long poll), 0..60s (default 5s).
func WithWait(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 || d > maxWait {
			return fmt.Errorf("WithWait: %v is outside [0, %v]", d, maxWait)
		}
		c.wait = d
		return nil
	}
}

// WithRetry sets how often the handler may fail on one window: at most
// maxAttempts deliveries (first one included), with a back-off between them
// growing exponentially from minBackoff to maxBackoff, with jitter. After
// the last failure Run returns a *HandlerError. Default: 5, 100ms, 10s.
func WithRetry(maxAttempts int, minBackoff, maxBackoff time.Duration) Option {
	return func(c *config) error {
		if maxAttempts < 1 {
			return fmt.Errorf("WithRetry: maxAttempts %d < 1", maxAttempts)
		}
		if minBackoff < 0 || maxBackoff < minBackoff {
			return fmt.Errorf("WithRetry: want 0 <= minBackoff (%v) <= maxBackoff (%v)", minBackoff, maxBackoff)
		}
		c.retryAttempts, c.retryMin, c.retryMax = maxAttempts, minBackoff, maxBackoff
		return nil
	}
}

// WithRelayRetry sets how pulls from the relays are retried after a
// connection error, a 5xx, a timeout or a protocol violation: each failure
// moves to the next relay after a back-off growing exponentially from
// minBackoff to maxBackoff, with jitter. maxAttempts bounds consecutive
// failures before Run returns an *UnavailableError; 0 (the default) retries
// until Run's context ends. Default back-off: 100ms to 10s.
func WithRelayRetry(maxAttempts int, minBackoff, maxBackoff time.Duration) Option {
	return func(c *config) error {
		if maxAttempts < 0 {
			return fmt.Errorf("WithRelayRetry: maxAttempts %d < 0", maxAttempts)
		}
		if minBackoff < 0 || maxBackoff < minBackoff {
			return fmt.Errorf("WithRelayRetry: want 0 <= minBackoff (%v) <= maxBackoff (%v)", minBackoff, maxBackoff)
		}
		c.relayAttempts, c.relayMin, c.relayMax = maxAttempts, minBackoff, maxBackoff
		return nil
	}
}

// WithCallbackTimeout sets the time budget of one delivery of a window
// (OnSchemaChange calls and OnWindow together) and of one OnRollback call.
// The handler's context is cancelled when it runs out; a delivery that
// overruns fails even if the handler returns nil. 0 means no budget.
// Default: 1 minute.
func WithCallbackTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("WithCallbackTimeout: negative duration %v", d)
		}
		c.callTimeout = d
		return nil
	}
}

// WithRequestTimeout bounds how long a relay may stall (default 30s): the
// wait for response headers beyond the long-poll wait, and every pause while
// the body arrives. It does not bound the whole transfer, so a large window
// that streams steadily is never cut off; a relay that stops sending is left
// for the next one.
func WithRequestTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("WithRequestTimeout: %v is not positive", d)
		}
		c.reqTimeout = d
		return nil
	}
}

// WithCheckpointEvery saves the checkpoint after every n processed windows
// instead of after each one (default 1). Run also saves when it returns. A
// larger n saves store writes at the price of more windows replayed after a
// crash.
func WithCheckpointEvery(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("WithCheckpointEvery: %d < 1", n)
		}
		c.every = n
		return nil
	}
}

// WithLogger sets the logger (default: none).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("WithLogger: nil logger")
		}
		c.logger = l
		return nil
	}
}

// WithHTTPClient sets the HTTP client used for every relay request. The
// default is the Client's own, with keep-alive connections that Run closes
// when it returns; a caller-supplied client is left as it is.
func WithHTTPClient(h *http.Client) Option {
	return func(c *config) error {
		if h == nil {
			return fmt.Errorf("WithHTTPClient: nil client")
		}
		c.httpClient = h
		return nil
	}
}

var clientName = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// WithName names this consumer in the relays' metrics (up to 64 characters
// of [A-Za-z0-9_.:-]). The default leaves the relay to use the remote
// address.
func WithName(name string) Option {
	return func(c *config) error {
		if !clientName.MatchString(name) {
			return fmt.Errorf("WithName: %q must be 1 to 64 characters of [A-Za-z0-9_.:-]", name)
		}
		c.name = name
		return nil
	}
}

// WithBufferWindows bounds how many windows the client fetches ahead of the
// handler (default 64), on top of the relay response being decoded.
func WithBufferWindows(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("WithBufferWindows: %d < 0", n)
		}
		c.bufferWindows = n
		return nil
	}
}

// WithEmptyWindows makes the client call OnWindow for windows with no
// events too: heartbeats of an idle source and transactions the filters
// removed entirely. By default such windows only advance the checkpoint.
func WithEmptyWindows() Option {
	return func(c *config) error {
		c.emptyWindows = true
		return nil
	}
}

// WithBootstrap names the bootstrap servers (base URLs such as
// "http://bootstrap-1:8090", all serving the same store) the client falls
// back to when no relay holds the windows after its checkpoint any more, or
// when it starts from checkpoint.FullHistory(): it then reads a consistent
// snapshot and the log after it from them, and returns to the relays at the
// log's target SCN (see BootstrapHandler and docs/BOOTSTRAP.md). Without
// it, falling off the relays ends Run with a *SCNNotHeldError.
func WithBootstrap(servers ...string) Option {
	return func(c *config) error {
		if len(servers) == 0 {
			return fmt.Errorf("WithBootstrap: no server URL")
		}
		c.bootstraps = nil
		for _, s := range servers {
			u, err := url.Parse(s)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
				return fmt.Errorf("WithBootstrap: server URL %q: want http(s)://host[:port][/path]", s)
			}
			c.bootstraps = append(c.bootstraps, strings.TrimRight(s, "/"))
		}
		return nil
	}
}
