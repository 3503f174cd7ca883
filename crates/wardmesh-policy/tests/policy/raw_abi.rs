//! The guest's ABI driven directly with wasmtime, the way OPA's other SDKs do it (the
//! `opa_eval_ctx_*` + `eval` path that opa-wasm skips for ABI ≥ 1.2), plus the fast path
//! with malformed input.

use wasmtime::{Caller, Engine, Instance, Linker, Memory, Module, Store, TypedFunc};

use super::support::clinic_bundle;

struct Guest {
    store: Store<Option<String>>,
    instance: Instance,
    memory: Memory,
}

impl Guest {
    fn new() -> Self {
        static COMPILED: std::sync::OnceLock<(Engine, Module)> = std::sync::OnceLock::new();
        let (engine, module) = COMPILED.get_or_init(|| {
            let engine = Engine::default();
            let module = Module::new(&engine, clinic_bundle().wasm()).unwrap();
            (engine, module)
        });
        let mut store = Store::new(engine, None);
        let ty = module
            .imports()
            .find(|i| i.module() == "env" && i.name() == "memory")
            .and_then(|i| i.ty().memory().cloned())
            .unwrap();
        let memory = Memory::new(&mut store, ty).unwrap();
        let mut linker = Linker::new(engine);
        linker.define(&store, "env", "memory", memory).unwrap();
        linker
            .func_wrap(
                "env",
                "opa_abort",
                move |mut c: Caller<'_, Option<String>>, addr: i32| {
                    let data = memory.data(&c);
                    let s = &data[addr as usize..];
                    let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
                    let msg = String::from_utf8_lossy(&s[..end]).into_owned();
                    *c.data_mut() = Some(msg.clone());
                    Err::<(), _>(wasmtime::Error::msg(msg))
                },
            )
            .unwrap();
        linker
            .func_wrap(
                "env",
                "opa_println",
                |_: Caller<'_, Option<String>>, _: i32| {},
            )
            .unwrap();
        let instance = linker.instantiate(&mut store, module).unwrap();
        Self {
            store,
            instance,
            memory,
        }
    }

    fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> TypedFunc<P, R> {
        self.instance.get_typed_func(&mut self.store, name).unwrap()
    }

    fn put(&mut self, bytes: &[u8]) -> i32 {
        let malloc = self.func::<i32, i32>("opa_malloc");
        let addr = malloc.call(&mut self.store, bytes.len() as i32).unwrap();
        self.memory
            .write(&mut self.store, addr as usize, bytes)
            .unwrap();
        addr
    }

    fn parse(&mut self, json: &str, with_nul: bool) -> i32 {
        let mut bytes = json.as_bytes().to_vec();
        if with_nul {
            bytes.push(0);
        }
        let addr = self.put(&bytes);
        let parse = self.func::<(i32, i32), i32>("opa_json_parse");
        parse
            .call(&mut self.store, (addr, bytes.len() as i32))
            .unwrap()
    }

    fn dump(&mut self, value: i32) -> serde_json::Value {
        let dump = self.func::<i32, i32>("opa_json_dump");
        let addr = dump.call(&mut self.store, value).unwrap() as usize;
        let data = self.memory.data(&self.store);
        let end = data[addr..].iter().position(|b| *b == 0).unwrap();
        serde_json::from_slice(&data[addr..addr + end]).unwrap()
    }
}

#[test]
fn eval_context_path_works_like_opa_sdks_use_it() {
    let mut g = Guest::new();
    let abi = g
        .instance
        .get_global(&mut g.store, "opa_wasm_abi_version")
        .unwrap();
    assert_eq!(abi.get(&mut g.store).i32(), Some(1));
    let entrypoints = g
        .func::<(), i32>("entrypoints")
        .call(&mut g.store, ())
        .unwrap();
    assert_eq!(
        g.dump(entrypoints),
        serde_json::json!({"wardmesh/authz/decision": 0})
    );
    let builtins = g
        .func::<(), i32>("builtins")
        .call(&mut g.store, ())
        .unwrap();
    assert_eq!(g.dump(builtins), serde_json::json!({}));

    let data = g.parse(&clinic_bundle().data().to_string(), true);
    assert_ne!(data, 0);
    let heap = g
        .func::<(), i32>("opa_heap_ptr_get")
        .call(&mut g.store, ())
        .unwrap();
    let input = super::support::Req::new(
        super::support::clinician(true),
        "GET",
        "/patients/p-2002/notes",
        "TREAT",
    )
    .input();
    for _ in 0..3 {
        g.func::<i32, ()>("opa_heap_ptr_set")
            .call(&mut g.store, heap)
            .unwrap();
        let input = g.parse(&input.to_string(), false);
        let ctx = g
            .func::<(), i32>("opa_eval_ctx_new")
            .call(&mut g.store, ())
            .unwrap();
        g.func::<(i32, i32), ()>("opa_eval_ctx_set_data")
            .call(&mut g.store, (ctx, data))
            .unwrap();
        g.func::<(i32, i32), ()>("opa_eval_ctx_set_input")
            .call(&mut g.store, (ctx, input))
            .unwrap();
        g.func::<(i32, i32), ()>("opa_eval_ctx_set_entrypoint")
            .call(&mut g.store, (ctx, 0))
            .unwrap();
        assert_eq!(
            g.func::<i32, i32>("eval").call(&mut g.store, ctx).unwrap(),
            0
        );
        let result = g
            .func::<i32, i32>("opa_eval_ctx_get_result")
            .call(&mut g.store, ctx)
            .unwrap();
        let rows = g.dump(result);
        assert_eq!(
            rows[0]["result"]["rule"], "part2-consent-required",
            "{rows}"
        );
    }
    // Memory does not grow with repeated evaluations from the same heap pointer.
    let pages = g.memory.size(&g.store);
    for _ in 0..50 {
        g.func::<i32, ()>("opa_heap_ptr_set")
            .call(&mut g.store, heap)
            .unwrap();
        let input = g.parse(&input.to_string(), false);
        let ctx = g
            .func::<(), i32>("opa_eval_ctx_new")
            .call(&mut g.store, ())
            .unwrap();
        g.func::<(i32, i32), ()>("opa_eval_ctx_set_data")
            .call(&mut g.store, (ctx, data))
            .unwrap();
        g.func::<(i32, i32), ()>("opa_eval_ctx_set_input")
            .call(&mut g.store, (ctx, input))
            .unwrap();
        g.func::<i32, i32>("eval").call(&mut g.store, ctx).unwrap();
    }
    assert_eq!(g.memory.size(&g.store), pages);
    // Malformed JSON parses to 0, as in OPA.
    assert_eq!(g.parse("{\"a\": ", false), 0);
}

#[test]
fn fast_path_with_malformed_input_aborts_with_a_message() {
    let mut g = Guest::new();
    let data = g.parse("{}", true);
    let heap = g
        .func::<(), i32>("opa_heap_ptr_get")
        .call(&mut g.store, ())
        .unwrap();
    let bad = b"{\"user\": ";
    g.memory.write(&mut g.store, heap as usize, bad).unwrap();
    let eval = g.func::<(i32, i32, i32, i32, i32, i32, i32), i32>("opa_eval");
    let err = eval
        .call(
            &mut g.store,
            (
                0,
                0,
                data,
                heap,
                bad.len() as i32,
                heap + bad.len() as i32,
                0,
            ),
        )
        .unwrap_err();
    let msg = g.store.data().clone().unwrap_or_default();
    assert!(msg.contains("malformed input JSON"), "{msg} / {err:#}");
}
