package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/internal/atomicfile"
)

// CheckpointStore persists a consumer's checkpoint. The client calls it from
// one goroutine at a time.
type CheckpointStore interface {
	// Load returns the stored checkpoint; found is false when none was ever
	// saved. An error means the store could not be read (Run returns it).
	Load(ctx context.Context) (cp checkpoint.Checkpoint, found bool, err error)
	// Save replaces the stored checkpoint. It must be atomic: a crash
	// during Save leaves either the old or the new checkpoint.
	Save(ctx context.Context, cp checkpoint.Checkpoint) error
}

// FileStore keeps the checkpoint in a file, as its JSON form. Save writes a
// temporary file in the same directory, syncs it, renames it over the file
// and syncs the directory, so a crash leaves either the old or the new
// checkpoint, never a mix; a temporary file left behind by a crash
// (name: the file's name + ".tmp-" + random) is ignored.
type FileStore struct {
	path string
}

// NewFileStore returns a store for the checkpoint file at path. The
// directory must exist; the file is created by the first Save.
func NewFileStore(path string) *FileStore { return &FileStore{path: path} }

// Path returns the checkpoint file's path.
func (s *FileStore) Path() string { return s.path }

// Load reads and validates the checkpoint file. A missing file is not an
// error (found is false); an unreadable or invalid one is, and the error
// names the file.
func (s *FileStore) Load(ctx context.Context) (checkpoint.Checkpoint, bool, error) {
	if err := ctx.Err(); err != nil {
		return checkpoint.Checkpoint{}, false, err
	}
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return checkpoint.Checkpoint{}, false, nil
	}
	if err != nil {
		return checkpoint.Checkpoint{}, false, fmt.Errorf("databus: checkpoint file: %w", err)
	}
	cp, err := checkpoint.Parse(b)
	if err != nil {
		return checkpoint.Checkpoint{}, false, fmt.Errorf("databus: checkpoint file %s: %w", s.path, err)
	}
	return cp, true, nil
}

// Save atomically replaces the checkpoint file.
func (s *FileStore) Save(ctx context.Context, cp checkpoint.Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := cp.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(s.path, append(b, '\n')); err != nil {
		return fmt.Errorf("databus: checkpoint file %s: %w", s.path, err)
	}
	return nil
}

// MemoryStore keeps the checkpoint in memory: a consumer that restarts
// starts over from its start checkpoint. It is the default store. The zero
// value is an empty store; it is safe for concurrent use.
type MemoryStore struct {
	mu    sync.Mutex
	cp    checkpoint.Checkpoint
	found bool
}

// Load returns the last saved checkpoint.
func (s *MemoryStore) Load(context.Context) (checkpoint.Checkpoint, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cp, s.found, nil
}

// Save records cp.
func (s *MemoryStore) Save(_ context.Context, cp checkpoint.Checkpoint) error {
	if err := cp.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cp, s.found = cp, true
	return nil
}
