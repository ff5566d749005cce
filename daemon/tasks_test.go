package daemon

import (
	"context"
	"errors"
	"testing"
)

// TestRunTasks checks the daemon's task supervision: the first failure
// stops everything and is returned, a shutdown is not an error, and a task
// that ends early without an error leaves the others running.
func TestRunTasks(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name string
		// cancelParent cancels Run's context once the early task returned.
		cancelParent bool
		// early is the result of the task that returns first.
		early   error
		wantErr error
		// othersLive: the other tasks still ran after early returned.
		othersLive bool
	}{
		{name: "failure stops the others", early: errBoom, wantErr: errBoom},
		{name: "shutdown is not an error", early: nil, cancelParent: true, othersLive: true},
		{name: "cancellation seen by a task is not an error", early: context.Canceled, wantErr: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			earlyDone := make(chan struct{})
			early := func(context.Context) error {
				defer close(earlyDone)
				return tt.early
			}
			live := make(chan bool, 1)
			waiter := func(ctx context.Context) error {
				<-earlyDone
				live <- ctx.Err() == nil
				if tt.cancelParent {
					cancel()
				}
				<-ctx.Done()
				return ctx.Err()
			}
			stopping := 0
			err := runTasks(ctx, func() { stopping++ }, early, waiter)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("runTasks = %v, want %v", err, tt.wantErr)
			}
			if stopping != 1 {
				t.Errorf("stopping ran %d times, want 1", stopping)
			}
			// A failure may cancel the waiter before or after it looks;
			// only a clean early end must leave it running.
			if got := <-live; tt.othersLive && !got {
				t.Error("a task ending without an error cancelled the others")
			}
		})
	}
}
