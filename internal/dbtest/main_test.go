package dbtest_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/databus-go/databus/internal/dbtest"
)

func TestMain(m *testing.M) {
	code := dbtest.Run(m)
	if code == 0 {
		// After Run every server is stopped, so every goroutine that waited
		// for one must be gone too.
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
