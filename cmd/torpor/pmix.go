package main

// pmixVersion reports the linked libpmix version; nil until pmix/libpmix lands.
var pmixVersion func() (string, error)
