// Command databus captures committed database changes and streams them to
// consumers. See README.md for the tour; `databus help` lists subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, oneLine(err))
		os.Exit(1)
	}
}

// oneLine renders an error as the single readable line the CLI promises.
func oneLine(err error) string {
	// Wrapped errors from several packages each carry the prefix; say it once.
	msg := strings.ReplaceAll(strings.Join(strings.Fields(err.Error()), " "), "databus: ", "")
	return "databus: " + msg
}
