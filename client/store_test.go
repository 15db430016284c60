package client

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/databus-go/databus/checkpoint"
)

// storeConformance is what every CheckpointStore must do.
func storeConformance(t *testing.T, s CheckpointStore) {
	ctx := context.Background()
	if _, found, err := s.Load(ctx); found || err != nil {
		t.Fatalf("empty store: Load = found %v, %v", found, err)
	}
	for _, scn := range []uint64{0, 10, 1 << 40} {
		if err := s.Save(ctx, checkpoint.At(scn)); err != nil {
			t.Fatal(err)
		}
		cp, found, err := s.Load(ctx)
		if err != nil || !found || cp != checkpoint.At(scn) {
			t.Fatalf("Load after Save(%d) = %v %v %v", scn, cp, found, err)
		}
	}
	if err := s.Save(ctx, checkpoint.Checkpoint{}); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("Save of an invalid checkpoint = %v", err)
	}
	if cp, _, _ := s.Load(ctx); cp.SCN != 1<<40 {
		t.Errorf("an invalid Save changed the stored checkpoint to %v", cp)
	}
}

func TestMemoryStore(t *testing.T) { storeConformance(t, new(MemoryStore)) }

func TestFileStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cp.json")
	storeConformance(t, NewFileStore(path))
	// No temporary file is left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after saves, want 1", len(entries))
	}
}

func TestFileStoreCrashLeavesOldCheckpoint(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "cp.json")
	s := NewFileStore(path)
	if err := s.Save(ctx, checkpoint.At(42)); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of a Save leaves a partial temporary file.
	if err := os.WriteFile(path+".tmp-123456", []byte(`{"v":1,"mode":"onl`), 0o644); err != nil {
		t.Fatal(err)
	}
	cp, found, err := NewFileStore(path).Load(ctx)
	if err != nil || !found || cp.SCN != 42 {
		t.Fatalf("Load after a crash = %v %v %v, want scn 42", cp, found, err)
	}
	if err := s.Save(ctx, checkpoint.At(43)); err != nil {
		t.Fatalf("Save after a crash: %v", err)
	}
	if cp, _, _ := s.Load(ctx); cp.SCN != 43 {
		t.Errorf("Load = %v, want 43", cp)
	}
}

func TestFileStoreCorruptFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cp.json")
	for _, content := range []string{"", "{", `{"v":1,"mode":"online","scn":-1}`, `{"v":2,"mode":"online","scn":1}`} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, err := NewFileStore(path).Load(context.Background())
		if !errors.Is(err, checkpoint.ErrInvalid) || !strings.Contains(err.Error(), path) {
			t.Errorf("Load of %q = %v, want checkpoint.ErrInvalid naming %s", content, err, path)
		}
	}
	// Run refuses to start from it rather than from the beginning.
	c, err := New([]string{"http://127.0.0.1:1"}, &recorder{}, WithCheckpointStore(NewFileStore(path)))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(context.Background()); !errors.Is(err, checkpoint.ErrInvalid) {
		t.Errorf("Run with a corrupt checkpoint file = %v", err)
	}
}

func TestFileStoreMissingDirectory(t *testing.T) {
	s := NewFileStore(filepath.Join(t.TempDir(), "no", "such", "cp.json"))
	if err := s.Save(context.Background(), checkpoint.At(1)); err == nil {
		t.Error("Save into a missing directory succeeded")
	}
}
