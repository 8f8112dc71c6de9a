// The API reference: Swagger UI over one service's OpenAPI document. Try-it-out requests go to this
// console (same origin), which passes them to the service with the key typed into "Authorize";
// the console wants its CSRF token on every request that changes something.
document.addEventListener("DOMContentLoaded", () => {
  const mount = document.getElementById("swagger");
  const csrf = mount.dataset.csrf;
  window.SwaggerUIBundle({
    url: mount.dataset.spec,
    domNode: mount,
    deepLinking: true,
    tryItOutEnabled: false,
    requestInterceptor: (request) => {
      request.headers["X-CSRF-Token"] = csrf;
      return request;
    },
  });
});
