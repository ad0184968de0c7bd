// The drill's user-facing defaults, in a module of their own with no imports, so that the
// command line can show them without loading the drill (every tidemark command loads the CLI).
export const VOLUME_MIB_DEFAULT = 32;
export const VOLUME_MIB_MAX = 1024;
