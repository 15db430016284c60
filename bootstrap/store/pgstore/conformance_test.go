package pgstore

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/storetest"
)

// TestConformance runs the store contract's suite, each store in a schema
// of its own in one database.
func TestConformance(t *testing.T) {
	conn := freshDB(t)
	var seq atomic.Uint32
	storetest.Run(t, storetest.Harness{Open: func(t *testing.T) (store.Store, func(*testing.T) store.Store) {
		opts := Options{Schema: fmt.Sprintf("store_%d", seq.Add(1))}
		t.Cleanup(func() {
			c, err := pgx.Connect(context.Background(), conn)
			if err != nil {
				t.Errorf("drop schema %s: %v", opts.Schema, err)
				return
			}
			defer c.Close(context.Background())
			if _, err := c.Exec(context.Background(), "DROP SCHEMA "+opts.Schema+" CASCADE"); err != nil {
				t.Errorf("drop schema %s: %v", opts.Schema, err)
			}
		})
		reopen := func(t *testing.T) store.Store {
			s, err := Open(context.Background(), conn, opts)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return s
		}
		return reopen(t), reopen
	}})
}
