// Command keyfence runs the proxy: it turns flags and environment into a
// configuration, wires the proxy server and the admin listener, and drains
// gracefully on SIGTERM or SIGINT.
package main
