package e2e

import (
	"os"
	"testing"
)

// TestMain lets the test binary, started again as a user the test created,
// act as a hand-made API client (see rawClient).
func TestMain(m *testing.M) {
	if sock := os.Getenv(rawClientEnv); sock != "" {
		os.Exit(rawClient(sock))
	}
	os.Exit(m.Run())
}
