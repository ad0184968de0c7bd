// zod's English messages, for every schema of tidemark. The schemas are built with zod's mini
// build (`import * as z from "zod/mini"`), not its classic one: a short command (`tidemark status`)
// parses the config once, and classic zod (its method-chaining classes, and every locale through
// its `z` namespace) took it several times as long to load as mini with the English messages
// (docs/benchmarks.md, CLI start). Mini runs the same core checks, so the issues and messages are
// the ones classic gave (test/unit/config.test.ts and the control ops' tests hold them), but it
// installs no messages of its own, where classic installs these at import: every module that builds
// a schema imports this one for its effect.
// Why not re-export zod from here: in the split bundle (scripts/build.mjs) esbuild then keeps a
// whole namespace object, all of zod's locales included, in the chunk every command loads.
import { config } from "zod/mini";
import en from "zod/v4/locales/en.js";

config(en());
