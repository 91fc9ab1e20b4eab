/// A command line or job file the launcher cannot run: the message says which option or key is
/// wrong and what it takes. The `kaitian` command shows it with the command's usage.
package struct UsageError: Error, CustomStringConvertible, Equatable {
  package let description: String
  package init(_ description: String) { self.description = description }
}
