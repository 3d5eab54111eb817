package main

import "google.golang.org/grpc/status"

func statusMessage(err error) (string, bool) {
	s, ok := status.FromError(err)
	if !ok {
		return "", false
	}
	return s.Message(), true
}
