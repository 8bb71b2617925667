//! Message bodies as they cross the proxy: the client's request body, guarded by the size
//! limit and idle timeout, and the response body streamed back.

mod request;
mod response;

pub use request::{ClientFault, ClientWait, RequestBody};
pub use response::{BodyError, End, Judged, Pending, ResponseBody, Source};
