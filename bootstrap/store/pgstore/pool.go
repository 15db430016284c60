package pgstore

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// pool is a bounded set of connections. It stands in for pgxpool, which
// needs a module (jackc/puddle) that go.mod does not require yet; it does
// only what the store needs: bounded concurrency, reuse, and dropping
// connections that are broken or were left inside a transaction.
type pool struct {
	cfg *pgx.ConnConfig
	// sem holds one token per connection handed out (or being opened), so
	// at most cap(sem) connections exist while in use.
	sem chan struct{}

	mu     sync.Mutex
	idle   []*conn // guarded by mu; most recently released last
	closed bool    // guarded by mu
}

// conn is one pooled session.
type conn struct {
	*pgx.Conn
	idleSince time.Time
	// staged is true once this session has created its temporary staging
	// table (temporary tables live as long as the session).
	staged bool
}

// idleCheck is how long a connection may sit idle before it is pinged
// before reuse: a server restart kills idle sessions silently.
const idleCheck = time.Second

func newPool(cfg *pgx.ConnConfig, size int) *pool {
	return &pool{cfg: cfg, sem: make(chan struct{}, size)}
}

// acquire returns a connection for the caller's exclusive use until
// release. It blocks until one is free or ctx ends.
func (p *pool) acquire(ctx context.Context) (*conn, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.sem
			return nil, ErrClosed
		}
		var c *conn
		if n := len(p.idle); n > 0 {
			c = p.idle[n-1]
			p.idle = p.idle[:n-1]
		}
		p.mu.Unlock()
		if c == nil {
			pc, err := pgx.ConnectConfig(ctx, p.cfg.Copy())
			if err != nil {
				<-p.sem
				return nil, err
			}
			return &conn{Conn: pc}, nil
		}
		if time.Since(c.idleSince) > idleCheck {
			if err := c.Ping(ctx); err != nil {
				closeConn(c)
				if ctx.Err() != nil {
					<-p.sem
					return nil, ctx.Err()
				}
				continue
			}
		}
		return c, nil
	}
}

// release gives c back. A connection that is closed, busy, or still inside
// a transaction (an error path whose rollback failed) is closed instead of
// reused, so that no caller ever inherits another's transaction.
func (p *pool) release(c *conn) {
	defer func() { <-p.sem }()
	pg := c.PgConn()
	if c.IsClosed() || pg.IsBusy() || pg.TxStatus() != 'I' {
		closeConn(c)
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		closeConn(c)
		return
	}
	c.idleSince = time.Now()
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// dropIdle closes the idle connections: when one was found broken, the
// others most likely died with it (a server restart).
func (p *pool) dropIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		closeConn(c)
	}
}

// close closes the idle connections and makes later acquires fail;
// connections in use are closed when released.
func (p *pool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.closed = true
	p.mu.Unlock()
	for _, c := range idle {
		closeConn(c)
	}
}

func closeConn(c *conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c.Close(ctx)
}
