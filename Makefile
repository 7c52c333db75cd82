# kong_plugin_servers: build, install, test, benchmark and demo.
#   make deps    install what builds and tests need (idempotent)
#   make build   release .so + kps-helper in target/release
#   make test    every suite; ends with one "N passed, N failed" line
#   make demo    the main job: nginx + real plugin servers, end to end
#   make fuzz    every fuzz target for FUZZ_SECONDS (60) each; make fuzz-smoke: 12 s each
#   make bench-kong KONG_SRC=<a Kong source tree>  ours beside Kong's own Lua (docs/PERFORMANCE.md)
#   make probe-outage  SIGKILL and SIGSTOP of each plugin server under load: responses, errors, timings
#   make jit-aborts    LuaJIT trace aborts in the shim under load, per hello plugin server
#   make install PREFIX=/usr/local   (or LUA_LIB_DIR=... LUA_CLIB_DIR=...)

PREFIX       ?= /usr/local
LUA_LIB_DIR  ?= $(PREFIX)/share/lua/5.1
LUA_CLIB_DIR ?= $(PREFIX)/lib/lua/5.1
CARGO        ?= cargo
BUSTED       ?= busted --lua=luajit
FUZZ_SECONDS ?= 60

RELEASE_DIR  := target/release
SO           := $(RELEASE_DIR)/libkong_plugin_servers.so
HELPER       := $(RELEASE_DIR)/kps-helper
LUA_TREE     := lua/kong/runloop/plugin_servers

APT_PACKAGES := nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache luajit2 \
                libluajit2-5.1-dev lua-cjson lua-messagepack lua-busted lua-luassert \
                lua-penlight lua-socket luarocks pkg-config wrk protobuf-compiler curl \
                strace valgrind util-linux \
                prometheus

.PHONY: all build header deps deps-apt deps-fixtures test test-rust test-unit test-integration \
        demo bench bench-kong probe-outage jit-aborts install uninstall clean deps-fuzz fuzz fuzz-smoke

all: build

build:
	$(CARGO) build --release --workspace

header:
	$(CARGO) run --quiet --no-default-features --example gen_header

deps: deps-apt deps-fixtures deps-fuzz
	$(CARGO) fetch

deps-fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	cd fuzz && $(CARGO) fetch

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "Debian packages: all present"; fi

deps-fixtures:
	@if [ -f fixtures/plugins/Makefile ]; then $(MAKE) -C fixtures/plugins all; fi

test: build
	tools/run-tests.sh

test-rust:
	$(CARGO) test --no-default-features --workspace

test-unit: build
	$(BUSTED) --run=unit

test-integration: build
	$(BUSTED) --run=integration

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) tools/fuzz.sh

fuzz-smoke:
	FUZZ_SECONDS=12 tools/fuzz.sh

demo: build
	tools/demo.sh

bench: build
	tools/bench.sh

# Not part of CI: needs a Kong source tree (KONG_SRC) and, for Kong's Go rows,
# lua-protobuf (KONG_PB_DIR: a directory with pb.so and protoc.lua).
bench-kong: build
	@test -n "$(KONG_SRC)" || { echo "usage: make bench-kong KONG_SRC=<a Kong source tree> [KONG_PB_DIR=<dir with pb.so, protoc.lua>]"; exit 2; }
	KONG_SRC="$(KONG_SRC)" KONG_PB_DIR="$(KONG_PB_DIR)" luajit bench/kong.lua

probe-outage: build
	tools/probe-outage.sh

jit-aborts: build
	luajit tools/jit-aborts.lua go-hello py-hello js-hello

install: build
	install -d $(DESTDIR)$(LUA_LIB_DIR)/kong/runloop/plugin_servers/rpc $(DESTDIR)$(LUA_CLIB_DIR)
	install -m 0644 $(LUA_TREE)/*.lua $(DESTDIR)$(LUA_LIB_DIR)/kong/runloop/plugin_servers/
	install -m 0644 $(LUA_TREE)/rpc/*.lua $(DESTDIR)$(LUA_LIB_DIR)/kong/runloop/plugin_servers/rpc/
	install -m 0755 $(SO) $(DESTDIR)$(LUA_CLIB_DIR)/kong_plugin_servers.so
	install -m 0755 $(HELPER) $(DESTDIR)$(LUA_CLIB_DIR)/kps-helper

uninstall:
	rm -rf $(DESTDIR)$(LUA_LIB_DIR)/kong/runloop/plugin_servers
	rm -f $(DESTDIR)$(LUA_CLIB_DIR)/kong_plugin_servers.so $(DESTDIR)$(LUA_CLIB_DIR)/kps-helper

clean:
	$(CARGO) clean
	rm -rf build spec/tmp

# Not in CI: load and reload under load through the real hello plugins
# (SOAK_SECONDS, SOAK_CONNECTIONS, SOAK_PLUGINS), memcheck over the Rust tests and
# the unit specs.
.PHONY: soak reload-soak valgrind
soak: build
	luajit tools/soak.lua load
	luajit tools/soak.lua reload

reload-soak: build
	luajit tools/soak.lua reload

valgrind: build
	tools/valgrind.sh
