// Lint rules: typescript-eslint's recommended set; unused variables are errors
// unless prefixed with an underscore, because dead code hides intent.
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["node_modules/", "var/", "coverage/", "dist/", "dist.*/"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrors: "none" }],
      "no-constant-condition": ["error", { checkLoops: false }],
    },
  },
  { files: ["bin/*", "scripts/*.mjs", "*.js"], languageOptions: { globals: { process: "readonly", console: "readonly" } } },
);
